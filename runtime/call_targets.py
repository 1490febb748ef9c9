"""The callables the GPU runtimes (Executor, fx lowering) run for call-like QIR nodes.

They resolve a node's target as the reference runtime does, with one substitution: torch's
scaled_dot_product_attention runs as torch.ops.qcomp.attention (codegen/attention.py), which takes
decode-shaped calls with its Triton kernel and hands every other call back to torch's attention. Where the
codegen cannot be imported (no triton), torch's callable stays.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qcomp.qir.targets import resolve_target


def runtime_callable(target: str):
    fn = resolve_target(target)
    if fn is F.scaled_dot_product_attention or fn is torch.ops.aten.scaled_dot_product_attention.default:
        try:
            from qcomp.codegen.attention import attention
        except Exception:  # ImportError, or triton failing to initialise
            return fn
        return attention
    return fn
