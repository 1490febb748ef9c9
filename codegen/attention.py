"""torch.ops.qcomp.attention and qcomp.cached_attention: attention with a Triton kernel for decode shapes.

    attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)     = torch's scaled_dot_product_attention
    cached_attention(q, k_cache, v_cache, k_new, v_new, pos, attn_mask, scale)
        = scaled_dot_product_attention(q, k_cache.index_copy(2, pos, k_new), v_cache.index_copy(2, pos, v_new), ...)

q [B, H, R, D], caches [B, H, S, D]. The runtime (executor and the torch.compile lowering) runs QIR attention
nodes through these ops (runtime/call_targets.py; cached_attention comes from passes/fuse_cache_attention.py).
Where a call is a decode step -- few query rows (R <= MAX_ROWS: one new token, or the query heads of one kv head
stacked as rows), fp16/bf16 CUDA tensors, D a power of two in 16..256, no dropout, not causal, a bool or additive
mask that broadcasts to [B, H, R, S] -- the flash-decoding kernel of codegen/attention_kernel.py runs: the cache is
read once, in place, and cached_attention reads position pos from k_new / v_new without copying the cache. Every
other call, and every call where triton cannot be imported, runs torch's attention (after the index_copy for
cached_attention). CPU tensors take torch's path too unless QCOMP_FORCE_TRITON=1 (with TRITON_INTERPRET=1, for CI)
forces the kernel. This module does not import triton, so graphs with these ops run without it.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

MAX_ROWS = 16  # query rows per (batch, head) the kernel takes (one tl.dot tile of 16 rows)
_DTYPES = (torch.float16, torch.bfloat16)


def _kernel():
    """codegen.attention_kernel, or None where triton cannot be imported (then torch's attention runs)."""
    try:
        from . import attention_kernel
    except ImportError:
        return None
    return attention_kernel


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
    if max(t.numel() for t in (q, k, v)) >= 2**31:
        return "a tensor of 2^31 or more elements (the kernel's offsets are 32-bit)"
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
            return f"mask dtype {attn_mask.dtype} (bool or the query's dtype)"
        try:
            fits = torch.broadcast_shapes(attn_mask.shape, (B, H, R, S)) == (B, H, R, S)
        except RuntimeError:
            fits = False
        if not fits or attn_mask.device != q.device:
            return "mask shape (must broadcast to [B, H, R, S]) or device"
    return None


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op("qcomp::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor],
                 dropout_p: float, is_causal: bool, scale: Optional[float], enable_gqa: bool) -> torch.Tensor:
    kern = _kernel() if kernel_unsupported(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa) is None else None
    if kern is not None:
        return kern.decode_attention(_unit_stride(q), _unit_stride(k), _unit_stride(v), attn_mask, scale)
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


def cached_unsupported(q, k_cache, v_cache, k_new, v_new, pos, attn_mask) -> Optional[str]:
    """Why the decode kernel does not take this cached_attention call (None: it does)."""
    why = kernel_unsupported(q, k_cache, v_cache, attn_mask, 0.0, False, False)
    if why:
        return why
    B, H, _, D = q.shape
    for t in (k_new, v_new):
        if t.shape != (B, H, 1, D) or t.dtype != q.dtype or t.device != q.device:
            return "new key / value shapes"
    if pos.numel() != 1 or pos.dtype not in (torch.int32, torch.int64) or pos.device != q.device:
        return "pos is not one integer on the device"
    return None


@torch.library.custom_op("qcomp::cached_attention", mutates_args=())
def cached_attention_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor,
                        v_new: torch.Tensor, pos: torch.Tensor, attn_mask: Optional[torch.Tensor],
                        scale: Optional[float]) -> torch.Tensor:
    """scaled_dot_product_attention(q, k_cache.index_copy(2, pos, k_new), v_cache.index_copy(2, pos, v_new),
    attn_mask, scale=scale): a decode step's attention over its cache with this step's key and value written at
    pos, without writing them (the kernel reads position pos from k_new / v_new; passes/fuse_cache_attention.py).
    A pos outside the cache, which index_copy refuses, gives NaN from the kernel (checking it on the host would
    stop CUDA-graph capture)."""
    kern = _kernel() if cached_unsupported(q, k_cache, v_cache, k_new, v_new, pos, attn_mask) is None else None
    if kern is not None:
        new = (_unit_stride(k_new), _unit_stride(v_new), pos)
        return kern.decode_attention(_unit_stride(q), _unit_stride(k_cache), _unit_stride(v_cache), attn_mask, scale,
                                     new)
    k = k_cache.index_copy(2, pos, k_new)
    v = v_cache.index_copy(2, pos, v_new)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


@cached_attention_op.register_fake
def _cached_attention_fake(q, k_cache, v_cache, k_new, v_new, pos, attn_mask, scale):
    return q.new_empty((*q.shape[:-1], v_cache.shape[-1]))
