"""RMSNorm recognition and the `qcomp::rms_norm` op that keeps an RMSNorm one node under torch.export.

    rms_norm(x, w, eps) = w * (x.float() * rsqrt(mean(x.float()^2, -1) + eps)).to(x.dtype)

(the Llama/HF formula; float64 inputs are computed in float64). A module counts as an RMSNorm when its class name ends in "RMSNorm", it has a
1-D `weight` and an epsilon attribute, and it computes exactly this formula on a random probe input —
so look-alikes with another formula (e.g. Gemma's 1 + w) are traced through instead of misread.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.library.custom_op("qcomp::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm_reference(x, weight, eps)


@rms_norm.register_fake
def _(x, weight, eps):
    return torch.empty_like(x, dtype=torch.promote_types(x.dtype, weight.dtype))


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    xf = x.to(torch.promote_types(x.dtype, torch.float32))  # at least float32; float64 stays float64
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else weight * y


def rms_eps(module: nn.Module) -> float | None:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        v = getattr(module, attr, None)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def is_rms_norm(module: nn.Module) -> bool:
    if isinstance(module, nn.RMSNorm):
        return module.weight is not None and module.normalized_shape.__len__() == 1
    if not type(module).__name__.endswith("RMSNorm"):
        return False
    w = getattr(module, "weight", None)
    eps = rms_eps(module)
    if not isinstance(w, torch.Tensor) or w.dim() != 1 or eps is None:
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, w.shape[0], generator=gen).to(device=w.device, dtype=w.dtype)
    try:
        with torch.no_grad():
            got = module(x)
            want = rms_norm_reference(x, w, eps)
    except Exception:
        return False
    return isinstance(got, torch.Tensor) and got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-5, atol=1e-6))


def module_rms_eps(module: nn.Module) -> float:
    if isinstance(module, nn.RMSNorm):
        return float(module.eps) if module.eps is not None else float(torch.finfo(module.weight.dtype).eps)
    return rms_eps(module)
