"""QuantSpec: how one linear layer's weight is quantized (the contract shared by passes, codegen, runtime).

A weight W of shape [N, K] (out_features, in_features) is cut along K into groups of `group_size`
consecutive weights (group_size = -1: one group per output row, i.e. per-channel). Each group has one
fp16 scale. Every group of `p` consecutive weights along K is one *code* of `bits * p` bits.

Dequantization (the one formula every kernel implements):

    w[n, k] = scale[n, k // g] * lut[code[n, k // p], k % p] + offset[n, k // g]

* grid "uniform"      : symmetric uniform, lut[c] = c - (2**bits - 1) / 2, no offset; p = 1.
* grid "uniform_asym" : asymmetric uniform (zero point), lut[c] = c, offset = -scale * zero_point; p = 1.
* grid "normal"       : MSE-optimal grid for N(0, I_p) with 2**(bits*p) points (Lloyd-Max for p = 1,
                        a vector grid for p = 2), scale = RMS of the group (so rows of the lut are
                        in units of the group's standard deviation); no offset.

Bits per weight (the cost the allocator budgets): bits + 16/group_size for the fp16 scale, + 16/group_size
more for the offset of "uniform_asym"; a lookup table is counted by the layer (amortized over numel),
see `bits_per_weight(numel=...)`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qcomp.versioned_json import dumps_versioned, loads_versioned

GRIDS = ("uniform", "uniform_asym", "normal")
SCALE_METHODS = {
    "uniform": ("absmax", "mse", "gauss"),
    "uniform_asym": ("absmax", "mse"),
    "normal": ("rms",),
}
SPEC_VERSION = 1


class QuantSpecError(ValueError):
    """A QuantSpec whose fields do not make sense together."""


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    grid: str = "uniform"
    p: int = 1
    group_size: int = 128
    scale: str = "absmax"
    scale_dtype: str = "f16"

    def __post_init__(self):
        self.validate()

    # -- checks -------------------------------------------------------------------------------
    def validate(self) -> None:
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise QuantSpecError(f"bits must be an integer in 1..8, got {self.bits!r}")
        if self.grid not in GRIDS:
            raise QuantSpecError(f"grid must be one of {GRIDS}, got {self.grid!r}")
        if self.p not in (1, 2):
            raise QuantSpecError(f"p must be 1 or 2, got {self.p!r}")
        if self.p == 2 and self.grid != "normal":
            raise QuantSpecError("p = 2 (vector codes) exists only for grid 'normal'")
        if self.bits * self.p > 8:
            raise QuantSpecError(
                f"a code holds bits*p = {self.bits * self.p} > 8 bits; use bits <= {8 // self.p} for p = {self.p}"
            )
        g = self.group_size
        if not isinstance(g, int) or not (g == -1 or 16 <= g <= 1024):
            raise QuantSpecError(f"group_size must be -1 (per-channel) or in 16..1024, got {g!r}")
        if g != -1 and g % self.p:
            raise QuantSpecError(f"group_size {g} is not a multiple of p = {self.p}")
        if self.scale not in SCALE_METHODS[self.grid]:
            raise QuantSpecError(
                f"scale {self.scale!r} is not valid for grid {self.grid!r}; choose one of {SCALE_METHODS[self.grid]}"
            )
        if self.scale_dtype not in ("f16", "bf16", "f32"):
            raise QuantSpecError(f"scale_dtype must be f16, bf16 or f32, got {self.scale_dtype!r}")

    def check_shape(self, n: int, k: int) -> None:
        """Raise QuantSpecError if a [n, k] weight cannot carry this spec."""
        if self.group_size != -1 and k % self.group_size:
            raise QuantSpecError(
                f"in_features {k} is not a multiple of group_size {self.group_size}; pick a group size dividing {k}"
            )
        if k % self.p:
            raise QuantSpecError(f"in_features {k} is not a multiple of p = {self.p}")

    # -- derived numbers ----------------------------------------------------------------------
    @property
    def code_bits(self) -> int:
        return self.bits * self.p

    @property
    def n_points(self) -> int:
        return 2 ** self.code_bits

    @property
    def has_offset(self) -> bool:
        return self.grid == "uniform_asym"

    @property
    def scale_bits(self) -> int:
        return 32 if self.scale_dtype == "f32" else 16

    def group(self, k: int) -> int:
        return k if self.group_size == -1 else self.group_size

    def bits_per_weight(self, k: int | None = None, numel: int | None = None) -> float:
        """Storage per weight: codes + scales (+ offsets), + the lookup table amortized over numel."""
        g = self.group(k) if k is not None else (self.group_size if self.group_size != -1 else 4096)
        per_group = self.scale_bits * (2 if self.has_offset else 1)
        total = self.bits + per_group / g
        if self.grid == "normal" and numel:
            total += self.n_points * self.p * 32 / numel
        return total

    # -- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantSpec":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise QuantSpecError(f"unknown QuantSpec fields {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return dumps_versioned(SPEC_VERSION, self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "QuantSpec":
        return cls.from_dict(loads_versioned(text, SPEC_VERSION, "QuantSpec", error=QuantSpecError))

    def short(self) -> str:
        g = "ch" if self.group_size == -1 else str(self.group_size)
        p = f"p{self.p}" if self.grid == "normal" else ""
        return f"{self.grid}{p}-w{self.bits}-g{g}"
