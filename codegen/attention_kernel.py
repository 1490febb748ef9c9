"""The flash-decoding Triton kernel behind torch.ops.qcomp.attention / cached_attention (codegen/attention.py).

Each program owns one (batch, head) and a range of key positions, keeps an online softmax (running max, sum,
[R, D] accumulator) over BLOCK_S keys at a time, and the last program of a (batch, head) to finish merges the
ranges (split-S with a self-resetting counter, as the qlinear kernels' split-K). With HAS_NEW, key/value position
pos comes from k_new / v_new instead of the cache (a decode step's own row, never written into the cache here).
On sm_90+ it launches with programmatic dependent launch (waiting before it reads anything; QCOMP_PDL=0 turns it
off, QCOMP_PDL=2 also lets the next kernel start early: ops.pdl_level), so its launch and start overlap the end of
the kernel before it.
Imported only when the kernel runs: qcomp works without triton.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl

BLOCK_S = 64  # key positions per step
_LOG2E = 1.4426950408889634


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, m_ptr, o_ptr, ws_ptr, cnt_ptr, kn_ptr, vn_ptr, pos_ptr,
    H, R, S, qk_scale, mask_scale, steps_per_split,
    sqb, sqh, sqr, skb, skh, sks, svb, svh, svs, smb, smh, smr, sms, sob, soh, sor, snkb, snkh, snvb, snvh,
    SPLIT,
    D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, MASK: tl.constexpr, F32_DOT: tl.constexpr,
    HAS_NEW: tl.constexpr, SPLIT_P2: tl.constexpr, PDL: tl.constexpr,
):
    # MASK: 0 none, 1 bool (True = attend), 2 additive. Scores are kept in log2 units (qk_scale = scale * log2 e).
    # HAS_NEW: key/value position pos (pos_ptr[0]) is read from kn/vn [B, H, 1, D] instead of the cache
    pid = tl.program_id(0)  # b * H + h
    sid = tl.program_id(1)  # key range
    b = pid // H
    h = pid % H
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, D)
    rmask = offs_r < R
    if PDL:  # launched with programmatic dependent launch: every input may come from the kernel before, read after
        tl.extra.cuda.gdc_wait()
        if PDL == 2:  # the next kernel may start its prologue while this one finishes (ops.pdl_level)
            tl.extra.cuda.gdc_launch_dependents()
    q = tl.load(q_ptr + b * sqb + h * sqh + offs_r[:, None] * sqr + offs_d[None, :], mask=rmask[:, None], other=0.0)
    if F32_DOT:  # the CPU interpreter's tl.dot: float32 operands
        q = q.to(tl.float32)
    if HAS_NEW:
        pos = tl.load(pos_ptr).to(tl.int32)
        k_new = tl.load(kn_ptr + b * snkb + h * snkh + offs_d)
        v_new = tl.load(vn_ptr + b * snvb + h * snvh + offs_d)
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
        if HAS_NEW:
            kt = tl.where((offs_s == pos)[None, :], k_new[:, None], kt)
            v = tl.where((offs_s == pos)[:, None], v_new[None, :], v)
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
    if HAS_NEW:  # a row index_copy would refuse: NaN, not a result that silently ignores the new row
        l_i = tl.where((pos < 0) | (pos >= S), float("nan"), l_i)
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
            # one round trip: every range's max and sum as a [SPLIT_P2, BLOCK_R] tile and its accumulator as
            # [SPLIT_P2, BLOCK_R, D] (SPLIT <= MAX_SPLIT), loaded together
            tl.store(cnt_ptr + pid, 0)  # zero again for the next launch
            offs_p = tl.arange(0, SPLIT_P2)
            pmask = (offs_p < SPLIT)[:, None]
            part = ws_ptr + ((pid * SPLIT + offs_p[:, None]) * BLOCK_R + offs_r[None, :]) * W  # [SPLIT_P2, BLOCK_R]
            m_s = tl.load(part + D, mask=pmask, other=float("-inf"), cache_modifier=".cg")
            l_s = tl.load(part + D + 1, mask=pmask, other=0.0, cache_modifier=".cg")
            acc_s = tl.load(part[:, :, None] + offs_d[None, None, :], mask=pmask[:, :, None], other=0.0,
                            cache_modifier=".cg")
            m_all = tl.max(m_s, axis=0)
            w = tl.exp2(m_s - tl.where(m_all == float("-inf"), 0.0, m_all)[None, :])
            l_all = tl.sum(w * l_s, axis=0)
            o = tl.sum(w[:, :, None] * acc_s, axis=0)
            tl.store(o_ptrs, (o / tl.where(rmask, l_all, 1.0)[:, None]).to(o_ptr.dtype.element_ty), mask=rmask[:, None])


MAX_SPLIT = 8  # key ranges per (batch, head); their merge loads every range's partials at once


def _splits(bh: int, steps: int, device) -> tuple[int, int]:
    """(split count, steps per split): one range for short caches (<= 4 key blocks), else ~2 programs per SM over
    the (batch, head) pairs and key ranges, at most MAX_SPLIT ranges (QCOMP_ATTN_SPLIT=N asks for N, for
    measurements). H200, bf16, D 128, 8 kv heads x 4 query rows, CUDA-graph replays (µs; torch's attention in
    brackets): S 256 batch 1: 1 range 7.35, 2: 8.56, 4: 7.74, 8: 7.69 (14.70); S 256 batch 16: 1 range 9.51,
    2-8: 13.8-15.4 (19.44); S 4096 batch 1: 1 range 79.7, 4: 24.8, 8: 16.5 (89.5)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    want = int(os.environ.get("QCOMP_ATTN_SPLIT") or 0) or (1 if steps <= 4 else -(-2 * sms // bh))
    want = max(1, min(steps, MAX_SPLIT, want))
    per = -(-steps // want)
    return -(-steps // per), per


def decode_attention(q, k, v, attn_mask=None, scale: Optional[float] = None, new=None) -> torch.Tensor:
    """The kernel path (attention.kernel_unsupported(...) must be None); new = (k_new, v_new, pos): position pos
    of k / v is read from k_new / v_new [B, H, 1, D] instead (attention.cached_unsupported(...) must be None)."""
    from .ops import pdl_level, split_k_counters

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
    kn, vn, pos = new if new is not None else (q, q, q)
    pdl = pdl_level(q.device)
    _decode_attention_kernel[(B * H, split)](
        q, k, v, m, o, ws, cnt, kn, vn, pos,
        H, R, S, scale * _LOG2E, _LOG2E, per,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *ms, *o.stride()[:3], *kn.stride()[:2], *vn.stride()[:2],
        split,
        D=D, BLOCK_R=block_r, BLOCK_S=BLOCK_S, MASK=mode, F32_DOT=q.device.type != "cuda", HAS_NEW=new is not None,
        SPLIT_P2=triton.next_power_of_2(split), PDL=pdl,
        num_warps=4, **({"launch_pdl": True} if pdl else {}),
    )
    return o
