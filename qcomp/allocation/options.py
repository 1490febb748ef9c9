"""The menu of quantization options for one linear layer, each with its exact cost and its error t².

An `Option` is what the allocator may pick for a layer of weight shape [N, K]:

* a `QuantSpec` plus `rotate` (quantize the weight after a normalized block Hadamard along K), or
* the 16-bit keep option (`spec=None`, `bits=16`, `error=0`): the layer stays in half precision.

Cost (`Option.bits`) is storage per weight, exactly as `QuantSpec.bits_per_weight(k=K, numel=N*K)`
counts it: code bits + fp16 scales (+ offsets) per group + the lookup table amortized over the layer.
The Hadamard itself is data-free (regenerated from its size) and costs no storage.

Error (`Option.error`) is the relative squared error t² = ||W - Ŵ||² / ||W||² (linearity theorem:
Δloss ≈ Σ α_l t_l²). By default:

* normal (Gaussian) grid with rotation: the grid's MSE on N(0, 1), from
  `qcomp.numerics.quantizer.gaussian_mse(spec)` or `qcomp.numerics.grids.normal_grid(bits, p)`;
  after a Hadamard rotation the weights of a group are close to Gaussian, so this is data-free;
* everything else: measured on the layer's weight (rotated first where `rotate`) by
  `quantize_weight` → `dequantize_weight` → `relative_mse`.

Pass `error_fn(spec, weight) -> t²` to override (it receives the rotated weight for rotated options).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from qcomp.numerics.hadamard import rotate_weight
from qcomp.numerics.quant_spec import QuantSpec
from qcomp.numerics.quantizer import dequantize_weight, quantize_weight, relative_mse

ErrorFn = Callable[[QuantSpec, "torch.Tensor | None"], float]

FAMILIES = ("normal", "uniform", "uniform_asym", "all")
KEEP_BITS = 16.0
OPTION_VERSION = 1


@dataclass(frozen=True)
class Option:
    """One choice for one layer: `spec` (None = keep in 16 bits), `rotate`, cost `bits`/weight, error `error` = t²."""

    spec: QuantSpec | None
    rotate: bool
    bits: float
    error: float

    def __post_init__(self):
        if self.spec is None and self.rotate:
            raise ValueError("the 16-bit keep option (spec=None) cannot be rotated")
        if not (math.isfinite(self.bits) and self.bits > 0):
            raise ValueError(f"Option.bits must be a positive finite number, got {self.bits!r}")
        if not (math.isfinite(self.error) and self.error >= 0):
            raise ValueError(f"Option.error (t²) must be finite and >= 0, got {self.error!r}")

    @property
    def is_keep(self) -> bool:
        return self.spec is None

    @property
    def label(self) -> str:
        if self.spec is None:
            return f"keep{self.bits:g}"
        return self.spec.short() + ("-rot" if self.rotate else "")

    def to_dict(self) -> dict:
        return {
            "version": OPTION_VERSION,
            "spec": None if self.spec is None else self.spec.to_dict(),
            "rotate": self.rotate,
            "bits": self.bits,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Option":
        if d.get("version") != OPTION_VERSION:
            raise ValueError(f"Option version {d.get('version')!r} is not supported (this qcomp reads {OPTION_VERSION})")
        spec = None if d["spec"] is None else QuantSpec.from_dict(d["spec"])
        return cls(spec=spec, rotate=bool(d["rotate"]), bits=float(d["bits"]), error=float(d["error"]))


def keep_option(bits: float = KEEP_BITS) -> Option:
    """The option 'do not quantize': the weight stays in a 16-bit float, no error."""
    return Option(spec=None, rotate=False, bits=float(bits), error=0.0)


def option_for(spec: QuantSpec, n: int, k: int, *, rotate: bool, error: float) -> Option:
    """An option for a [n, k] layer; its cost is computed exactly from the spec (lookup table amortized)."""
    spec.check_shape(n, k)
    return Option(spec=spec, rotate=rotate, bits=spec.bits_per_weight(k=k, numel=n * k), error=float(error))


# -- the menu ---------------------------------------------------------------------------------------
def candidate_specs(
    k: int,
    family: str = "normal",
    bits: Iterable[int] = range(2, 9),
    group_sizes: Iterable[int] = (64, 128, 256),
) -> list[tuple[QuantSpec, bool]]:
    """(spec, rotate) pairs of a grid family that a layer with in_features k can carry.

    normal       : Gaussian grid, p = 1 and p = 2 (bits * p <= 8), always rotated.
    uniform      : symmetric uniform, rotated and not.
    uniform_asym : asymmetric uniform (zero point), not rotated.
    all          : the union.
    Specs whose group size does not divide k are skipped.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown option family {family!r}; choose one of {FAMILIES}")
    bits, group_sizes = list(bits), list(group_sizes)
    families = ("normal", "uniform", "uniform_asym") if family == "all" else (family,)
    out: list[tuple[QuantSpec, bool]] = []
    for fam in families:
        for g in group_sizes:
            if g != -1 and k % g:
                continue
            for b in bits:
                if fam == "normal":
                    out += [(QuantSpec(bits=b, grid="normal", p=p, group_size=g, scale="rms"), True)
                            for p in (1, 2) if b * p <= 8 and k % p == 0]
                elif fam == "uniform":
                    out += [(QuantSpec(bits=b, grid="uniform", group_size=g), r) for r in (True, False)]
                else:
                    out.append((QuantSpec(bits=b, grid="uniform_asym", group_size=g), False))
    return out


def default_options(
    n: int,
    k: int,
    *,
    weight: torch.Tensor | None = None,
    family: str = "normal",
    bits: Iterable[int] = range(2, 9),
    group_sizes: Iterable[int] = (64, 128, 256),
    error_fn: ErrorFn | None = None,
    rotate_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    keep: bool = True,
) -> tuple[Option, ...]:
    """The standard menu for a [n, k] layer: `candidate_specs(...)` plus the 16-bit keep option.

    error_fn(spec, weight) -> t² overrides the default error (see the module docstring); for rotated
    options it gets `rotate_fn(weight)` (default: `hadamard_rotate`). `weight` may be None only when
    every error is data-free (an injected error_fn that ignores it, or Gaussian grids).
    A layer whose k no group size divides gets only the keep option.
    """
    if weight is not None and tuple(weight.shape) != (n, k):
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected [{n}, {k}]")
    rotate_fn = rotate_fn or hadamard_rotate
    rotated = None
    opts: list[Option] = []
    for spec, rot in candidate_specs(k, family, bits, group_sizes):
        if error_fn is not None:
            w = weight
            if rot and weight is not None:
                rotated = rotate_fn(weight) if rotated is None else rotated
                w = rotated
            err = error_fn(spec, w)
        else:
            err = default_error(spec, rot, weight, rotate_fn)
        opts.append(option_for(spec, n, k, rotate=rot, error=err))
    if keep:
        opts.append(keep_option())
    return tuple(opts)


# -- errors -----------------------------------------------------------------------------------------
def gaussian_error(spec: QuantSpec) -> float:
    """MSE of the spec's grid on N(0, 1) (t² of a rotated layer); needs the normal-grid numerics."""
    try:
        from qcomp.numerics.quantizer import gaussian_mse  # type: ignore[attr-defined]
    except ImportError:
        gaussian_mse = None
    if gaussian_mse is not None:
        return float(gaussian_mse(spec))
    try:
        from qcomp.numerics.grids import normal_grid  # type: ignore[import-not-found]
    except ImportError as e:
        raise NotImplementedError(
            "Gaussian-grid errors need qcomp.numerics.quantizer.gaussian_mse or qcomp.numerics.grids.normal_grid, "
            "neither is available yet; pass error_fn=... to default_options"
        ) from e
    return float(normal_grid(spec.bits, spec.p)[1])


def measured_error(spec: QuantSpec, weight: torch.Tensor) -> float:
    """Relative squared error of quantizing `weight` with `spec` (round trip through the quantizer)."""
    q = quantize_weight(weight, spec)
    return relative_mse(weight, dequantize_weight(q, spec))


def default_error(spec: QuantSpec, rotate: bool, weight: torch.Tensor | None,
                  rotate_fn: Callable[[torch.Tensor], torch.Tensor] = None) -> float:
    """Gaussian MSE for rotated normal grids, else the error measured on the (rotated) weight."""
    if spec.grid == "normal" and rotate:
        return gaussian_error(spec)
    if weight is None:
        raise ValueError(f"option {spec.short()} needs the layer's weight to measure its error; pass weight=...")
    w = (rotate_fn or hadamard_rotate)(weight) if rotate else weight
    return measured_error(spec, w)


# -- rotation used to measure errors of rotated options ---------------------------------------------
def hadamard_block(k: int, max_block: int = 1024) -> int:
    """Largest power of two that divides k, capped at max_block."""
    b = k & -k
    return min(b, max_block)


def hadamard_rotate(w: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """w @ blockdiag(H_b / sqrt(b)) along K (orthogonal, so relative errors are the same in both bases)."""
    n, k = w.shape
    b = block or hadamard_block(k)
    if k % b or b & (b - 1):
        raise ValueError(f"Hadamard block {b} must be a power of two dividing in_features {k}")
    return rotate_weight(w.detach().to(torch.float32), b)
