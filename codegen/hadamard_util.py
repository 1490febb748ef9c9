"""Small Hadamard helpers the kernels need: the +-1 Sylvester matrix, the sign vector, a torch rotation.

The rotation convention is the project's (qcomp.numerics.hadamard): x @ Q with
Q = blockdiag(diag(signs) @ H_h / sqrt(h)) over the last dim. `rotate_blocks` is the float32 reference and
the separate-pass fallback for blocks larger than the fused limit.
"""
from __future__ import annotations

import functools
import math

import torch

from qcomp.numerics.hadamard import hadamard_matrix, random_signs


@functools.lru_cache(maxsize=None)
def _sylvester_cpu(n: int) -> torch.Tensor:
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    return (hadamard_matrix(n) * math.sqrt(n)).round().to(torch.float32)  # the project's H_n, entries +-1


@functools.lru_cache(maxsize=64)
def _sylvester_on(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return _sylvester_cpu(n).to(device=device, dtype=dtype)


def sylvester(n: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Unnormalized Sylvester Hadamard matrix (+-1 entries), n a power of two; cached per device (so that
    a rotation inside CUDA-graph capture copies nothing from the host)."""
    return _sylvester_on(n, dtype, str(torch.device(device)))


def signs_for(h: int, seed: int | None) -> torch.Tensor:
    """The sign vector D_s of qcomp.numerics.hadamard.random_signs(h, seed); seed None: all +1."""
    return random_signs(h, seed, dtype=torch.float32)


def rotate_blocks(x: torch.Tensor, signs: torch.Tensor, h: int) -> torch.Tensor:
    """x @ blockdiag(diag(signs) @ H_h / sqrt(h)) along the last dim, computed in float32, returned in x.dtype."""
    k = x.shape[-1]
    if k % h:
        raise ValueError(f"in_features {k} is not a multiple of the Hadamard block {h}")
    xf = x.to(torch.float32).reshape(*x.shape[:-1], k // h, h) * signs.to(x.device, torch.float32)
    y = xf @ sylvester(h, torch.float32, x.device) * (h ** -0.5)
    return y.reshape(x.shape).to(x.dtype)
