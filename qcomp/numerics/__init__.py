"""Numerics: quantization specs and grids, quantize/dequantize, Hadamard rotations.

Modules: quant_spec (the QuantSpec contract), grids (stored MSE-optimal Gaussian grids, QuEST clips),
lloyd + make_grids (how the stored grids are generated), quantizer (quantize_weight / dequantize_weight /
gaussian_mse), hadamard (orthonormal Hadamard matrices and block rotations), report_rotated_mse.
"""
from .grids import QUEST_ALPHA, normal_grid, normal_grid_points, uniform_gauss_mse
from .hadamard import (
    choose_block_size,
    hadamard_matrix,
    hadamard_transform,
    is_hadamard_size,
    random_signs,
    rotate_weight,
)
from .quant_spec import QuantSpec, QuantSpecError
from .quantizer import QuantizedWeight, dequantize_weight, gaussian_mse, quantize_weight, relative_mse

__all__ = [
    "QUEST_ALPHA", "QuantSpec", "QuantSpecError", "QuantizedWeight", "choose_block_size", "dequantize_weight",
    "gaussian_mse", "hadamard_matrix", "hadamard_transform", "is_hadamard_size", "normal_grid",
    "normal_grid_points", "quantize_weight", "random_signs", "relative_mse", "rotate_weight", "uniform_gauss_mse",
]
