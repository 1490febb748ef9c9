"""Packed qlinear tensors -> float weight (the oracle every kernel is checked against)."""
from __future__ import annotations

import torch

from qcomp.codegen.packing import unpack_codes
from qcomp.numerics.quant_spec import QuantSpec
from qcomp.numerics.quantizer import QuantizedWeight, dequantize_weight


def dequantize_packed(packed: torch.Tensor, scales: torch.Tensor, lut: torch.Tensor, offsets: torch.Tensor | None,
                      spec: QuantSpec, n: int, k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    codes = unpack_codes(packed, spec.code_bits, n, k // spec.p)
    return dequantize_weight(QuantizedWeight(codes, scales, lut, offsets), spec, dtype)
