"""GPTQ (Frantar et al., 2022): quantize a weight column by column, feeding each column's error forward.

Given the Hessian H = sum_x x^T x of the layer's inputs (collected by `collect_hessians` on calibration
batches), GPTQ minimizes ||X W^T - X W_hat^T||^2 greedily: columns are quantized left to right and, after
each one, the not-yet-quantized columns are corrected by the Optimal-Brain-Surgeon update
    W[:, j>i] -= (w_i - q_i) / U[i, i] * U[i, j>i],   U = upper Cholesky factor of (H + damp)^-1,
applied lazily per block of columns (one matmul per block for the columns right of it).

Storage is exactly that of `quantize_weight(w, spec)` (same codes / scales / offsets / lut layout), so
dequantization, packing and the kernels are unchanged:
* group scales (and offsets) follow the spec's own rule (RMS for "normal", absmax / mse / gauss for
  "uniform", [min, max] or mse for "uniform_asym"), computed from the error-updated weights when a group
  starts and fixed for the group (the reference implementation's static-within-group scheme);
* p = 2 (vector grids): columns 2i, 2i+1 are coded jointly as the nearest 2-D grid point (Euclidean, as
  `quantize_weight`), then the errors of both columns are propagated one after the other, which is the
  OBS update for fixing both columns (the 2x2 block of U, upper triangular);
* dead inputs (H_ii = 0): H_ii := 1 and the column is zeroed before quantization, as in GPTQ.
Columns are taken in their natural order (no act-order), so groups stay contiguous.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable

import torch

from .quant_spec import QuantSpec
from .quantizer import (
    _SCALE_DTYPES,
    QuantizedWeight,
    _quant_normal,
    _quant_uniform,
    _quant_uniform_asym,
    _round_scale,
    _safe,
    nearest_points,
    spec_lut,
)


def _block_size(block: int, g: int, p: int) -> int:
    """Columns per lazy block, aligned so that each group either lies inside a block or starts one."""
    if g <= block:
        return (block // g) * g
    for d in range(block - block % p, p - 1, -p):
        if g % d == 0:
            return d
    return g


def _group_params(src: torch.Tensor, spec: QuantSpec, sdt: torch.dtype, lut: torch.Tensor):
    """(scale, scale with zeros replaced by 1, rounded offset or None), each [N, 1], of one group src [N, g],
    by the spec's own rule."""
    wg = src[:, None, :]
    if spec.grid == "uniform":
        _, scale, off = _quant_uniform(wg, spec, sdt)
    elif spec.grid == "uniform_asym":
        _, scale, off = _quant_uniform_asym(wg, spec, sdt)
        off = _round_scale(off, sdt)[:, 0]  # the stored offset, as dequantize_weight will use it
    else:
        _, scale, off = _quant_normal(wg, spec, sdt, lut)
    return scale[:, 0], _safe(scale[:, 0]), off


def _quant_cols(w: torch.Tensor, params, spec: QuantSpec, lut: torch.Tensor, mid: torch.Tensor):
    """Codes [N] and dequantized values [N, p] of columns w [N, p] with the group's _group_params."""
    scale, safe, off = params
    levels = spec.n_points - 1
    if spec.grid == "uniform":
        code = torch.round(w / safe + levels / 2).clamp(0, levels)
        return code[:, 0], scale * (code - levels / 2)
    if spec.grid == "uniform_asym":
        code = torch.round((w - off) / safe).clamp(0, levels)
        return code[:, 0], scale * code + off
    z = w / safe
    if spec.p == 1:  # = nearest_points (bucketize on the midpoints `mid`), without bucketize's per-call overhead
        code = (z > mid).sum(-1)
    else:
        code = nearest_points(z, lut)
    return code, scale * lut[code]


def prepare_hessian(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): U = upper Cholesky factor of (H + damp * mean(diag H) * I)^-1 (float32), dead = (H_ii == 0)."""
    H = H.to(torch.float64).clone()
    diag = H.diagonal()
    dead = diag == 0
    H[dead, dead] = 1.0
    mean = float(diag.mean())
    k = H.shape[0]
    eye = torch.eye(k, dtype=H.dtype, device=H.device)
    d = damp * mean
    for _ in range(6):  # not positive definite (e.g. damp=0 on rank-deficient H): grow the damping
        L, info = torch.linalg.cholesky_ex(H + d * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return U.to(torch.float32), dead
        d = max(d * 10, 1e-6 * max(mean, 1e-12))
    raise ValueError("gptq: the Hessian is not positive definite even with damping; check the calibration inputs")


def gptq_quantize(w: torch.Tensor, H: torch.Tensor, spec: QuantSpec, *, damp: float = 0.01, block: int = 128,
                  act_order: bool = False, stats: dict | None = None) -> QuantizedWeight:
    """Quantize w [N, K] to `spec` with GPTQ error feedback given H [K, K] = sum of x^T x over inputs x.

    act_order: quantize columns (p-vectors) in decreasing order of H_ii, with "static groups": every group's
    scale is computed from the original weights first (groups are no longer contiguous in time).
    Runs on H's device; the result lives on w's device. `stats`, when given, receives "proxy_loss"
    (GPTQ's sum over columns of (w - q)^2 / U_ii^2 / 2, relative to the damped Hessian).
    """
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"gptq_quantize expects a 2-D floating-point weight [N, K], got {w.dtype} {tuple(w.shape)}")
    n, k = w.shape
    if H.shape != (k, k):
        raise ValueError(f"gptq_quantize: H has shape {tuple(H.shape)}, expected ({k}, {k}) for a weight with in_features {k}")
    if not damp >= 0:
        raise ValueError(f"gptq_quantize: damp must be >= 0, got {damp}")
    if block < 1:
        raise ValueError(f"gptq_quantize: block must be >= 1, got {block}")
    spec.check_shape(n, k)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("gptq_quantize: the weight has NaN or Inf entries")
    if not bool(torch.isfinite(H).all()):
        raise ValueError("gptq_quantize: the Hessian has NaN or Inf entries (overflowing calibration activations?)")
    dev = H.device
    p, g = spec.p, spec.group(k)
    sdt = _SCALE_DTYPES[spec.scale_dtype]
    lut = spec_lut(spec).to(dev)
    mid = 0.5 * (lut[1:, 0] + lut[:-1, 0])
    W = w.detach().to(device=dev, dtype=torch.float32).clone()
    W[:, H.diagonal() == 0] = 0
    codes = torch.empty(n, k // p, dtype=torch.uint8, device=dev)
    scales = torch.empty(n, k // g, dtype=sdt, device=dev)
    offsets = torch.empty(n, k // g, dtype=sdt, device=dev) if spec.has_offset else None
    perm = None
    if act_order:  # static groups from the original weights, then columns by decreasing H_ii
        static = []
        for gi in range(k // g):
            static.append(_group_params(W[:, gi * g : (gi + 1) * g], spec, sdt, lut))
            scales[:, gi] = static[-1][0][:, 0].to(sdt)
            if offsets is not None:
                offsets[:, gi] = static[-1][2][:, 0].to(sdt)
        units = torch.argsort(H.diagonal().reshape(-1, p).sum(-1), descending=True, stable=True)
        perm = (units[:, None] * p + torch.arange(p, device=dev)).reshape(-1)
        W, H = W[:, perm], H[perm][:, perm]
        perm = perm.tolist()
    U, _ = prepare_hessian(H, damp)
    bs = _block_size(block, g, p) if perm is None else max(p, block - block % p)
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    params = None
    for i1 in range(0, k, bs):
        i2 = min(i1 + bs, k)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.empty_like(W1)
        for i in range(0, i2 - i1, p):
            col = i1 + i
            if perm is not None:
                col = perm[col]  # the column's place in the weight (and its group)
                params = static[col // g]
            elif col % g == 0:  # a group starts: its scale from the weights as corrected so far
                src = W1[:, i : i + g] if i + g <= i2 - i1 else W[:, col : col + g]
                params = _group_params(src, spec, sdt, lut)
                scales[:, col // g] = params[0][:, 0].to(sdt)
                if offsets is not None:
                    offsets[:, col // g] = params[2][:, 0].to(sdt)
            code, q = _quant_cols(W1[:, i : i + p], params, spec, lut, mid)
            codes[:, col // p] = code.to(torch.uint8)
            for j in range(p):  # p = 2: the second column's error after the first one's update
                d = U1[i + j, i + j]
                e = (W1[:, i + j] - q[:, j]) / d
                W1[:, i + j + 1 :] -= e[:, None] * U1[i + j, i + j + 1 :][None, :]
                Err1[:, i + j] = e
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
        loss += Err1.double().pow(2).sum() / 2
    if stats is not None:
        stats["proxy_loss"] = float(loss)
    out_dev = w.device
    return QuantizedWeight(codes=codes.to(out_dev), scales=scales.to(out_dev), lut=lut.to(out_dev).clone(),
                           offsets=offsets.to(out_dev) if offsets is not None else None)


def output_rel_error(w: torch.Tensor, w_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W - W_hat) H (W - W_hat)^T) / tr(W H W^T): the relative squared output error on the calibration inputs."""
    W = w.to(device=H.device, dtype=torch.float32)
    D = W - w_hat.to(device=H.device, dtype=torch.float32)
    H = H.to(torch.float32)
    num = float(((D @ H) * D).sum(dtype=torch.float64))
    den = float(((W @ H) * W).sum(dtype=torch.float64))
    return num / den if den > 0 else 0.0


# -- Hessians from the graph's own activations -------------------------------------------------------
class _AllSeen(Exception):
    """Raised by the hooks once every producer of a batch is recorded: the rest of the forward is not needed."""


def collect_hessians(graph, producers: Iterable[str], batches: list[tuple], *, device=None) -> dict[str, torch.Tensor]:
    """Mean x^T x (float32 [K, K]) of the value of each node in `producers`, over all calibration batches.

    A producer is the node whose output a linear reads (its args[0]); linears that share an input (q/k/v,
    gate/up) share one Hessian. The graph runs on the reference runtime (its weights as they are: float, or
    already quantized for sequential GPTQ), and each forward stops once all producers have been seen.
    """
    from qcomp.runtime.reference import ReferenceRuntime

    rt = ReferenceRuntime(graph, device=device)
    producers = list(dict.fromkeys(producers))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    seen: set[str] = set()

    def hook(name: str) -> Callable[[torch.Tensor], None]:
        def record(x):
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                raise ValueError(f"gptq: %{name} feeds a linear but is not a floating-point tensor")
            x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
            s = sums.get(name)
            if s is None:
                s = sums[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
                counts[name] = 0
            s.addmm_(x.T, x)
            counts[name] += x.shape[0]
            seen.add(name)
            if len(seen) == len(producers):
                raise _AllSeen
        return record

    rt.value_hooks = {name: hook(name) for name in producers}
    for b in batches:
        seen.clear()
        try:
            rt.run(*(b if isinstance(b, tuple) else (b,)))
        except _AllSeen:
            pass
    missing = [n for n in producers if n not in sums]
    if missing:
        raise ValueError(f"gptq: the calibration run never produced %{missing[0]} (inputs of a linear)")
    short = [n for n in producers if counts[n] < sums[n].shape[0]]
    if short:  # rank-deficient H: GPTQ fits noise (measured worse than plain rounding on a tiny model)
        from qcomp.api import QcompWarning

        rows, k = min(counts[n] for n in short), max(sums[n].shape[0] for n in short)
        warnings.warn(f"GPTQ calibration has {rows} rows (tokens) but layers have up to {k} inputs; the Hessians are "
                      f"rank-deficient and GPTQ may be worse than plain rounding. Pass at least {k} calibration "
                      "tokens (several times more is better), or quantize(gptq=False)", QcompWarning, stacklevel=2)
    return {n: s / max(counts[n], 1) for n, s in sums.items()}
