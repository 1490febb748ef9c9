"""Quantize / dequantize a weight [N, K] for any QuantSpec (see quant_spec.py for the formula)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .quant_spec import QuantSpec

_SCALE_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}


@dataclass
class QuantizedWeight:
    """Unpacked result of quantization. codes: uint8 [N, K // p]; scales/offsets: [N, K // g]; lut: f32 [n_points, p]."""

    codes: torch.Tensor
    scales: torch.Tensor
    lut: torch.Tensor
    offsets: torch.Tensor | None = None


def uniform_lut(spec: QuantSpec) -> torch.Tensor:
    c = torch.arange(spec.n_points, dtype=torch.float32)
    if spec.grid == "uniform":
        c = c - (spec.n_points - 1) / 2
    return c[:, None]


def _grouped(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    n, k = w.shape
    g = spec.group(k)
    return w.reshape(n, k // g, g)


def quantize_weight(w: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    if w.dim() != 2:
        raise ValueError(f"quantize_weight expects a 2-D weight [N, K], got shape {tuple(w.shape)}")
    n, k = w.shape
    spec.check_shape(n, k)
    wg = _grouped(w.detach().to(torch.float32), spec)
    sdt = _SCALE_DTYPES[spec.scale_dtype]
    levels = spec.n_points - 1
    if spec.grid == "uniform":
        if spec.scale != "absmax":
            raise NotImplementedError(f"scale method {spec.scale!r} is not implemented yet")
        amax = wg.abs().amax(-1, keepdim=True).clamp_min(1e-12)
        scale = (2 * amax / levels).to(sdt).to(torch.float32) if levels else amax
        scale = torch.where(scale > 0, scale, torch.full_like(scale, 1e-8))
        codes = torch.round(wg / scale + levels / 2).clamp(0, levels)
        offsets = None
    elif spec.grid == "uniform_asym":
        if spec.scale != "absmax":
            raise NotImplementedError(f"scale method {spec.scale!r} is not implemented yet")
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
        scale = ((hi - lo) / levels).clamp_min(1e-8).to(sdt).to(torch.float32)
        zero = torch.round(-lo / scale)
        offsets = (-scale * zero).to(sdt)
        codes = torch.round(wg / scale + zero).clamp(0, levels)
    else:
        raise NotImplementedError(f"grid {spec.grid!r} is not implemented yet")
    return QuantizedWeight(
        codes=codes.reshape(n, k).to(torch.uint8),
        scales=scale.reshape(n, -1).to(sdt),
        lut=uniform_lut(spec),
        offsets=None if offsets is None else offsets.reshape(n, -1),
    )


def dequantize_weight(q: QuantizedWeight, spec: QuantSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    n, kc = q.codes.shape
    k = kc * spec.p
    g = spec.group(k)
    vals = q.lut.to(torch.float32)[q.codes.long()]  # [N, K/p, p]
    vals = vals.reshape(n, k // g, g)
    w = vals * q.scales.to(torch.float32).reshape(n, -1, 1)
    if q.offsets is not None:
        w = w + q.offsets.to(torch.float32).reshape(n, -1, 1)
    return w.reshape(n, k).to(dtype)


def relative_mse(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    w = w.to(torch.float64)
    return float(((w - w_hat.to(torch.float64)) ** 2).sum() / (w**2).sum().clamp_min(1e-300))
