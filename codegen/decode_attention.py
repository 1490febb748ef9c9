"""torch.ops.qcomp.attention: scaled dot-product attention, with a Triton kernel for decode shapes.

    y = softmax(q @ k^T * scale + mask) @ v        q [B, H, R, D], k/v [B, H, S, D] -> y [B, H, R, D]

Same signature and result as torch.nn.functional.scaled_dot_product_attention. The runtime (executor and the
torch.compile lowering) runs QIR attention nodes through this op. Where a call is a decode step -- few query rows
(R <= MAX_ROWS: one new token, or the query heads of one kv head stacked as rows), fp16/bf16 CUDA tensors, D a
power of two in 16..256, no dropout, not causal, a bool or additive mask that broadcasts to [B, H, R, S] -- one
flash-decoding kernel runs: each program owns one (batch, head) and a range of key positions, keeps an online
softmax (running max, sum, [R, D] accumulator) over BLOCK_S keys at a time, and the last program of a (batch,
head) to finish merges the ranges (split-S with a self-resetting counter, as the qlinear kernels' split-K). The
cache is read once, in place; no mask or repeated-key tensor is materialized. Every other call runs
torch's scaled_dot_product_attention. CPU tensors take it too unless QCOMP_FORCE_TRITON=1 (with
TRITON_INTERPRET=1, for CI) forces the kernel.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

MAX_ROWS = 16  # query rows per (batch, head) the kernel takes (one tl.dot tile of 16 rows)
BLOCK_S = 64  # key positions per step
_DTYPES = (torch.float16, torch.bfloat16)
_LOG2E = 1.4426950408889634
_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, m_ptr, o_ptr, ws_ptr, cnt_ptr,
    H, R, S, qk_scale, mask_scale, steps_per_split,
    sqb, sqh, sqr, skb, skh, sks, svb, svh, svs, smb, smh, smr, sms, sob, soh, sor,
    SPLIT,
    D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, MASK: tl.constexpr, F32_DOT: tl.constexpr,
):
    # MASK: 0 none, 1 bool (True = attend), 2 additive. Scores are kept in log2 units (qk_scale = scale * log2 e)
    pid = tl.program_id(0)  # b * H + h
    sid = tl.program_id(1)  # key range
    b = pid // H
    h = pid % H
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, D)
    rmask = offs_r < R
    q = tl.load(q_ptr + b * sqb + h * sqh + offs_r[:, None] * sqr + offs_d[None, :], mask=rmask[:, None], other=0.0)
    if F32_DOT:  # the CPU interpreter's tl.dot: float32 operands
        q = q.to(tl.float32)
    m_i = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_R,), tl.float32)
    acc = tl.zeros((BLOCK_R, D), tl.float32)
    s_lo = sid * steps_per_split * BLOCK_S
    s_hi = tl.minimum(s_lo + steps_per_split * BLOCK_S, S)
    for s0 in range(s_lo, s_hi, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        smask = offs_s < s_hi
        kt = tl.load(k_ptr + b * skb + h * skh + offs_s[None, :] * sks + offs_d[:, None], mask=smask[None, :], other=0.0)
        v = tl.load(v_ptr + b * svb + h * svh + offs_s[:, None] * svs + offs_d[None, :], mask=smask[:, None], other=0.0)
        if F32_DOT:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, kt) * qk_scale  # [BLOCK_R, BLOCK_S], log2 units
        if MASK != 0:
            mv = tl.load(m_ptr + b * smb + h * smh + offs_r[:, None] * smr + offs_s[None, :] * sms,
                         mask=rmask[:, None] & smask[None, :], other=0)
            if MASK == 1:
                qk = tl.where(mv != 0, qk, float("-inf"))
            else:
                qk += mv.to(tl.float32) * mask_scale
        qk = tl.where(smask[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing to attend to yet: no NaN
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(qk - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    o_ptrs = o_ptr + b * sob + h * soh + offs_r[:, None] * sor + offs_d[None, :]
    if SPLIT == 1:
        tl.store(o_ptrs, (acc / tl.where(rmask, l_i, 1.0)[:, None]).to(o_ptr.dtype.element_ty), mask=rmask[:, None])
    else:  # partials (max, sum, accumulator) to the workspace; the last range of this (b, h) merges them in order
        W = D + 2
        base = ws_ptr + (pid * SPLIT + sid) * BLOCK_R * W
        tl.store(base + offs_r[:, None] * W + offs_d[None, :], acc)
        tl.store(base + offs_r * W + D, m_i)
        tl.store(base + offs_r * W + D + 1, l_i)
        tl.debug_barrier()  # all threads' partials are written before one thread announces them (release)
        done = tl.atomic_add(cnt_ptr + pid, 1, sem="acq_rel", scope="gpu")
        if done == SPLIT - 1:
            tl.store(cnt_ptr + pid, 0)  # zero again for the next launch
            m_all = tl.full((BLOCK_R,), float("-inf"), tl.float32)
            for s in range(0, SPLIT):
                part = ws_ptr + (pid * SPLIT + s) * BLOCK_R * W
                m_all = tl.maximum(m_all, tl.load(part + offs_r * W + D, cache_modifier=".cg"))
            m_ref = tl.where(m_all == float("-inf"), 0.0, m_all)
            l_all = tl.zeros((BLOCK_R,), tl.float32)
            o = tl.zeros((BLOCK_R, D), tl.float32)
            for s in range(0, SPLIT):
                part = ws_ptr + (pid * SPLIT + s) * BLOCK_R * W
                w = tl.exp2(tl.load(part + offs_r * W + D, cache_modifier=".cg") - m_ref)
                l_all += w * tl.load(part + offs_r * W + D + 1, cache_modifier=".cg")
                o += w[:, None] * tl.load(part + offs_r[:, None] * W + offs_d[None, :], cache_modifier=".cg")
            tl.store(o_ptrs, (o / tl.where(rmask, l_all, 1.0)[:, None]).to(o_ptr.dtype.element_ty), mask=rmask[:, None])


def _use_kernel(q: torch.Tensor) -> bool:
    if q.device.type == "cuda":
        return True
    return os.environ.get("QCOMP_FORCE_TRITON") == "1" and os.environ.get("TRITON_INTERPRET") == "1"


def kernel_unsupported(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa) -> Optional[str]:
    """Why the decode kernel does not take this call (None: it does); such calls run torch's attention."""
    if not _use_kernel(q):
        return "not on CUDA"
    if dropout_p or is_causal or enable_gqa:
        return "dropout, is_causal or enable_gqa"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "not 4-D [B, H, L, D]"
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return "dtypes other than one of float16 / bfloat16"
    if not (q.device == k.device == v.device):
        return "tensors on different devices"
    B, H, R, D = q.shape
    S = k.shape[2]
    if k.shape != (B, H, S, D) or v.shape != (B, H, S, D):
        return "k / v shapes"
    if R > MAX_ROWS or S == 0 or D & (D - 1) or not 16 <= D <= 256:
        return f"R = {R} query rows (at most {MAX_ROWS}), S = {S}, D = {D} (a power of two in 16..256)"
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and attn_mask.dtype not in (torch.float32, *_DTYPES):
            return f"mask dtype {attn_mask.dtype}"
        try:
            torch.broadcast_shapes(attn_mask.shape, (B, H, R, S))
        except RuntimeError:
            return "mask shape"
        if torch.broadcast_shapes(attn_mask.shape, (B, H, R, S)) != (B, H, R, S) or attn_mask.device != q.device:
            return "mask shape or device"
    return None


def _splits(bh: int, steps: int, device) -> tuple[int, int]:
    """(split count, steps per split): ~2 programs per SM over the (batch, head) pairs and key ranges."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    want = max(1, min(steps, -(-2 * sms // bh)))
    per = -(-steps // want)
    return -(-steps // per), per


def decode_attention(q, k, v, attn_mask=None, scale: Optional[float] = None) -> torch.Tensor:
    """The kernel path (kernel_unsupported(...) must be None)."""
    from .ops import split_k_counters

    B, H, R, D = q.shape
    S = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    o = torch.empty(B, H, R, D, device=q.device, dtype=q.dtype)
    steps = -(-S // BLOCK_S)
    split, per = _splits(B * H, steps, q.device)
    block_r = 16
    if split > 1:
        ws = torch.empty(B * H * split * block_r * (D + 2), device=q.device, dtype=torch.float32)
        cnt = split_k_counters(q.device, B * H)
    else:
        ws, cnt = o, o  # unused
    if attn_mask is None:
        mode, m, ms = 0, q, (0, 0, 0, 0)
    else:
        mode = 1 if attn_mask.dtype == torch.bool else 2
        m = attn_mask.expand(B, H, R, S)
        ms = m.stride()
    _decode_attention_kernel[(B * H, split)](
        q, k, v, m, o, ws, cnt,
        H, R, S, scale * _LOG2E, _LOG2E, per,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *ms, *o.stride()[:3],
        split,
        D=D, BLOCK_R=block_r, BLOCK_S=BLOCK_S, MASK=mode, F32_DOT=q.device.type != "cuda",
        num_warps=4,
    )
    return o


@torch.library.custom_op("qcomp::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor],
                 dropout_p: float, is_causal: bool, scale: Optional[float], enable_gqa: bool) -> torch.Tensor:
    if kernel_unsupported(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa) is None:
        return decode_attention(q.contiguous() if q.stride(-1) != 1 else q, k if k.stride(-1) == 1 else k.contiguous(),
                                v if v.stride(-1) == 1 else v.contiguous(), attn_mask, scale)
    kw = {"enable_gqa": True} if enable_gqa else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale, **kw)


@attention_op.register_fake
def _attention_fake(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention's signature, run by torch.ops.qcomp.attention."""
    return torch.ops.qcomp.attention(query, key, value, attn_mask, float(dropout_p), bool(is_causal),
                                     None if scale is None else float(scale), bool(enable_gqa))
