"""Quantize / dequantize a weight [N, K] for any QuantSpec (see quant_spec.py for the formula).

Grids and scales
* "uniform" (symmetric, lut[c] = c - (n-1)/2): scale "absmax" puts the outermost level at the group's
  max |w|; "gauss" puts it at QuEST's alpha_b * RMS(group) (MSE-optimal for Gaussian groups, i.e. rotated
  weights); "mse" searches shrink factors s of absmax per group and keeps the best (17 factors in
  [0.2, 1] then 6 around the best one, resolution 0.0125; s = 1 is absmax, so never worse than it).
* "uniform_asym" (lut[c] = c, offset = -scale * zero_point): "absmax" spans [min, max]; "mse" shrinks
  that range around its center by the best factor s, searched the same way.
* "normal" (MSE-optimal grid for N(0, I_p), p = 1 or 2): scale = RMS of the group; the code is the
  nearest grid point to (w / scale) (nearest p-dim point for p = 2).
Scales are rounded to scale_dtype before codes are chosen, so codes are optimal for the stored scale.

Memory: the weight is processed in row chunks of about CHUNK_ELEMS elements (and p = 2 nearest-point
search in sub-chunks), so a 28672 x 8192 weight needs only the output plus a few hundred MB. The p = 2
search compares all points for grids up to RASTER_MIN_POINTS and uses an exact raster of candidate
lists (_Raster2D, about 3 candidates per query) for larger ones.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .grids import QUEST_ALPHA, normal_grid, uniform_gauss_mse
from .quant_spec import QuantSpec

_SCALE_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
CHUNK_ELEMS = 1 << 22
MSE_SHRINK_COARSE = torch.linspace(1.0, 0.2, 17).tolist()  # step 0.05
MSE_SHRINK_FINE = [-0.0375, -0.025, -0.0125, 0.0125, 0.025, 0.0375]  # around the best coarse factor
RASTER_MIN_POINTS = 64  # p = 2 grids with more points (128, 256) use the raster search (_Raster2D)


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


def spec_lut(spec: QuantSpec) -> torch.Tensor:
    """The lookup table float32 [n_points, p] of a spec."""
    return normal_grid(spec.bits, spec.p)[0] if spec.grid == "normal" else uniform_lut(spec)


# -- per-chunk quantizers: wg float32 [rows, G, g] -> (codes [rows, G, g/p], scale [rows, G, 1], offset or None)
def _round_scale(x: torch.Tensor, sdt: torch.dtype) -> torch.Tensor:
    return x.to(sdt).to(torch.float32)


def _safe(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _sym_codes(wg, scale, levels):
    return torch.round(wg / _safe(scale) + levels / 2).clamp(0, levels)


def _asym_params(lo, hi, levels, sdt):
    scale = _round_scale((hi - lo) / levels, sdt)
    zero = torch.round(-lo / _safe(scale))
    return scale, zero


def _asym_codes(wg, scale, zero, levels):
    return torch.round(wg / _safe(scale) + zero).clamp(0, levels)


def _shrink_search(err_of, like: torch.Tensor) -> torch.Tensor:
    """Per-group shrink factor s minimizing err_of(s) (coarse grid, then a finer one around the best)."""
    best_s = torch.ones_like(like)
    best_err = torch.full_like(like, float("inf"))
    for stage in (MSE_SHRINK_COARSE, MSE_SHRINK_FINE):
        base = best_s.clone()
        for v in stage:
            s = torch.full_like(like, v) if stage is MSE_SHRINK_COARSE else (base + v).clamp(0.05, 1.0)
            err = err_of(s)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, s, best_s)
    return best_s


def _quant_uniform(wg, spec, sdt):
    levels = spec.n_points - 1
    amax = wg.abs().amax(-1, keepdim=True)
    if spec.scale == "absmax":
        scale = _round_scale(2 * amax / levels, sdt)
    elif spec.scale == "gauss":
        rms = wg.pow(2).mean(-1, keepdim=True).sqrt()
        scale = _round_scale(2 * QUEST_ALPHA[spec.bits] * rms / levels, sdt)
    else:  # "mse"
        def err_of(s):
            sc = _round_scale(2 * amax * s / levels, sdt)
            return (wg - sc * (_sym_codes(wg, sc, levels) - levels / 2)).pow(2).sum(-1, keepdim=True)

        scale = _round_scale(2 * amax * _shrink_search(err_of, amax) / levels, sdt)
    return _sym_codes(wg, scale, levels), scale, None


def _quant_uniform_asym(wg, spec, sdt):
    levels = spec.n_points - 1
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    if spec.scale == "absmax":
        scale, zero = _asym_params(lo, hi, levels, sdt)
    else:  # "mse": shrink [lo, hi] around its center
        mid, half = (hi + lo) / 2, (hi - lo) / 2

        def err_of(s):
            sc, z = _asym_params(mid - s * half, mid + s * half, levels, sdt)
            off = _round_scale(-sc * z, sdt)
            return (wg - (sc * _asym_codes(wg, sc, z, levels) + off)).pow(2).sum(-1, keepdim=True)

        s = _shrink_search(err_of, lo)
        scale, zero = _asym_params(mid - s * half, mid + s * half, levels, sdt)
    return _asym_codes(wg, scale, zero, levels), scale, -scale * zero


class _Raster2D:
    """Exact nearest-point search in 2-D through a raster of candidate lists.

    The square [-R, R]^2 is cut into cells; a cell keeps every grid point j with
    |c - p_j| <= |c - p_nearest(c)| + 2 r (c the cell center, r its half-diagonal): by the triangle
    inequality no other point can be nearest anywhere in the cell. A query then compares only those few
    candidates; queries outside the square fall back to comparing all points.
    """

    def __init__(self, lut: torch.Tensor, radius: float = 6.0, cells: int = 512, chunk: int = 1 << 14):
        self.lut = lut.to(torch.float32)
        self.radius, self.cells = radius, cells
        self.h = 2 * radius / cells
        ax = (torch.arange(cells, dtype=torch.float64) + 0.5) * self.h - radius
        centers = torch.cartesian_prod(ax, ax)  # cell (i, j) at row i * cells + j
        slack = 2 * (self.h / 2) * 2**0.5 + 1e-9
        lists = []
        for s in range(0, centers.shape[0], chunk):
            d = torch.cdist(centers[s : s + chunk], lut.to(torch.float64))
            k = int((d <= d.min(-1, keepdim=True).values + slack).sum(-1).max())
            vals, idx = torch.topk(d, min(k, d.shape[1]), largest=False)  # candidates, nearest first
            lists.append(torch.where(vals <= vals[:, :1] + slack, idx, idx[:, :1]))  # pad with the nearest
        kmax = max(c.shape[1] for c in lists)
        self.cand = torch.cat([torch.cat([c, c[:, :1].expand(-1, kmax - c.shape[1])], 1) for c in lists])

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        inside = flat.abs().amax(-1) < self.radius
        ij = ((flat + self.radius) * (1.0 / self.h)).long().clamp_(0, self.cells - 1)
        cand = self.cand[ij[:, 0] * self.cells + ij[:, 1]]  # [M, kmax]
        d = (self.lut[cand] - flat[:, None, :]).pow(2).sum(-1)
        out = cand.gather(1, d.argmin(-1, keepdim=True))[:, 0]
        if not bool(inside.all()):
            far = flat[~inside]
            out[~inside] = ((self.lut * self.lut).sum(-1)[None, :] - 2 * far @ self.lut.T).argmin(-1)
        return out


@functools.lru_cache(maxsize=16)
def _raster_for(lut_bytes: bytes, n: int) -> _Raster2D:
    return _Raster2D(torch.frombuffer(bytearray(lut_bytes), dtype=torch.float32).reshape(n, 2))


def nearest_points(z: torch.Tensor, lut: torch.Tensor, chunk: int = 1 << 18) -> torch.Tensor:
    """Index (int64) of the nearest row of lut [n, p] for every p-vector of z [..., p] (exact; ties: any)."""
    p = lut.shape[1]
    lut = lut.to(z.device)
    if p == 1:
        lut1 = lut[:, 0]
        if not bool((lut1[1:] > lut1[:-1]).all()):
            raise ValueError("a scalar lookup table must be strictly increasing")
        return torch.bucketize(z[..., 0], 0.5 * (lut1[1:] + lut1[:-1]))
    if p != 2:
        raise ValueError(f"nearest_points supports p = 1 or 2, got lut of shape {tuple(lut.shape)}")
    lut = lut.to(torch.float32).contiguous()
    flat = z.reshape(-1, p).to(torch.float32)
    if lut.shape[0] <= RASTER_MIN_POINTS or flat.device.type != "cpu":  # few points / GPU: compare all of them
        cn = (lut * lut).sum(-1)
        search = lambda x: (cn[None, :] - 2 * x @ lut.T).argmin(-1)  # noqa: E731
    else:
        search = _raster_for(lut.numpy().tobytes(), lut.shape[0])
    out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    for s in range(0, flat.shape[0], chunk):
        out[s : s + chunk] = search(flat[s : s + chunk])
    return out.reshape(z.shape[:-1])


def _quant_normal(wg, spec, sdt, lut):
    rows, G, g = wg.shape
    scale = _round_scale(wg.pow(2).mean(-1, keepdim=True).sqrt(), sdt)
    z = (wg / _safe(scale)).reshape(rows, G, g // spec.p, spec.p)
    return nearest_points(z, lut), scale, None


# -- public API ---------------------------------------------------------------------------------------
def _chunk_rows(n: int, k: int) -> int:
    return max(1, min(n, CHUNK_ELEMS // max(k, 1)))


def quantize_weight(w: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    if w.dim() != 2:
        raise ValueError(f"quantize_weight expects a 2-D weight [N, K], got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"quantize_weight expects a floating-point weight, got {w.dtype}")
    n, k = w.shape
    spec.check_shape(n, k)
    w = w.detach()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("quantize_weight: the weight has NaN or Inf entries; fix the checkpoint or mask them first")
    g = spec.group(k)
    sdt = _SCALE_DTYPES[spec.scale_dtype]
    lut = spec_lut(spec)
    dev = w.device  # quantize where the weight lives (CUDA weights stay on the GPU)
    lut = lut.to(dev)
    codes = torch.empty(n, k // spec.p, dtype=torch.uint8, device=dev)
    scales = torch.empty(n, k // g, dtype=sdt, device=dev)
    offsets = torch.empty(n, k // g, dtype=sdt, device=dev) if spec.has_offset else None
    step = _chunk_rows(n, k)
    for r in range(0, n, step):
        wg = w[r : r + step].to(dtype=torch.float32).reshape(-1, k // g, g)
        if spec.grid == "uniform":
            c, sc, off = _quant_uniform(wg, spec, sdt)
        elif spec.grid == "uniform_asym":
            c, sc, off = _quant_uniform_asym(wg, spec, sdt)
        else:
            c, sc, off = _quant_normal(wg, spec, sdt, lut)
        codes[r : r + step] = c.reshape(wg.shape[0], -1).to(torch.uint8)
        scales[r : r + step] = sc.reshape(wg.shape[0], -1).to(sdt)
        if offsets is not None:
            offsets[r : r + step] = off.reshape(wg.shape[0], -1).to(sdt)
    return QuantizedWeight(codes=codes, scales=scales, lut=lut.clone(), offsets=offsets)


def dequantize_weight(q: QuantizedWeight, spec: QuantSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w[n, k] = scale[n, k // g] * lut[code[n, k // p], k % p] + offset[n, k // g], in row chunks."""
    n, kc = q.codes.shape
    k = kc * spec.p
    g = spec.group(k)
    if q.lut.shape != (spec.n_points, spec.p):
        raise ValueError(f"lut has shape {tuple(q.lut.shape)}, spec {spec.short()} needs ({spec.n_points}, {spec.p})")
    if q.scales.shape != (n, k // g):
        raise ValueError(f"scales have shape {tuple(q.scales.shape)}, expected ({n}, {k // g}) for group {g}")
    lut = q.lut.to(device=q.codes.device, dtype=torch.float32)
    out = torch.empty(n, k, dtype=dtype, device=q.codes.device)
    step = _chunk_rows(n, k)
    for r in range(0, n, step):
        vals = lut[q.codes[r : r + step].long()].reshape(-1, k // g, g)
        w = vals * q.scales[r : r + step].to(torch.float32).reshape(-1, k // g, 1)
        if q.offsets is not None:
            w = w + q.offsets[r : r + step].to(torch.float32).reshape(-1, k // g, 1)
        out[r : r + step] = w.reshape(-1, k).to(dtype)
    return out


def relative_mse(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    w = w.to(torch.float64)
    return float(((w - w_hat.to(torch.float64)) ** 2).sum() / (w**2).sum().clamp_min(1e-300))


@functools.lru_cache(maxsize=None)
def gaussian_mse(spec: QuantSpec, k: int | None = None) -> float:
    """Expected relative MSE of the spec on N(0, 1) weights (the allocator's t^2).

    normal grids: the grid's MSE per dimension; uniform "gauss": exact MSE of the QuEST-clipped grid;
    absmax / mse scales (which depend on the group's extremes, hence on the group size g = spec.group(k),
    g = 4096 for per-channel without k): measured on a seeded N(0, 1) sample of about 2^20 weights.
    """
    if spec.grid == "normal":
        return normal_grid(spec.bits, spec.p)[1]
    if spec.grid == "uniform" and spec.scale == "gauss":
        return uniform_gauss_mse(spec.bits)
    g = spec.group(k) if k is not None else (spec.group_size if spec.group_size != -1 else 4096)
    rows = max(1, (1 << 20) // g)
    x = torch.randn(rows, g, generator=torch.Generator().manual_seed(0))
    gen_spec = QuantSpec(**{**spec.to_dict(), "group_size": g if g <= 1024 else -1})
    return relative_mse(x, dequantize_weight(quantize_weight(x, gen_spec), gen_spec))
