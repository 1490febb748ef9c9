"""Bit allocation: per-layer option menus (cost, error t²) and the exact DP under an average-bits budget."""
from .dp import Allocation, BudgetError, LayerCandidates, LayerChoice, allocate, average_bits
from .options import (
    FAMILIES,
    Option,
    candidate_specs,
    default_options,
    gaussian_error,
    hadamard_rotate,
    keep_option,
    measured_error,
    option_for,
)

__all__ = [
    "Allocation", "BudgetError", "LayerCandidates", "LayerChoice", "allocate", "average_bits",
    "FAMILIES", "Option", "candidate_specs", "default_options", "gaussian_error", "hadamard_rotate",
    "keep_option", "measured_error", "option_for",
]
