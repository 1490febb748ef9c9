"""Orthonormal Hadamard matrices, a fast Walsh-Hadamard transform, and block-diagonal random rotations.

Valid sizes. A Hadamard matrix is built for n = m * 2^k with m in {1, 12, 20, 28}, as the Kronecker
product H_m (x) H_{2^k} (H_{2^k} Sylvester, natural order: (-1)^popcount(i & j)):
    H_12 = Paley I with q = 11, H_20 = Paley I with q = 19 (Jacobsthal matrix of GF(q), q = 3 mod 4),
    H_28 = Paley II with q = 13 (q = 1 mod 4; avoids GF(27) needed by Paley I), and
    40 = 20 * 2 (Sylvester doubling of H_20) is already in the 20 * 2^k family, as is every 40 * 2^k.
So the valid sizes are 2^k (k >= 0, including the trivial 1) and 3, 5 or 7 times 2^k with k >= 2.

Block size rule (`choose_block_size(k, max_block)`): the largest valid size h <= max_block that divides k.
Examples: 4096 -> 1024 (cap), 576 = 9*64 -> 192 (= 12*16; 9 is not a valid odd factor, 3*64 = 192 is),
1536 = 3*512 -> 768 (= 12*64), 384 -> 384 (= 12*32), 172 = 4*43 -> 4, 43 -> 1 (no rotation but signs).

Rotation. `hadamard_transform(x, h, seed)` multiplies the last dim of x by Q = blockdiag(D_s H_h, ...),
D_s = diag(random_signs(h, seed)) (the same signs in every block), H_h orthonormal; inverse=True uses
Q^T. Cost O(n log n) for the 2^k part plus O(m) per element for the m part. float16/bfloat16 inputs are
computed in float32 and cast back; float32/float64 stay in their dtype.
"""
from __future__ import annotations

import functools
import math

import torch

BASE_ORDERS = (12, 20, 28)  # 40 = 2 * 20 is covered by the 20 * 2^k family


def _legendre(a: int, q: int) -> int:
    a %= q
    if a == 0:
        return 0
    return 1 if pow(a, (q - 1) // 2, q) == 1 else -1


def _jacobsthal(q: int) -> torch.Tensor:
    return torch.tensor([[_legendre(j - i, q) for j in range(q)] for i in range(q)], dtype=torch.float64)


def _paley1(q: int) -> torch.Tensor:
    """Order q + 1 for a prime q = 3 mod 4: H = I + S, S = [[0, 1^T], [-1, Q]]."""
    S = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = _jacobsthal(q)
    return torch.eye(q + 1, dtype=torch.float64) + S


def _paley2(q: int) -> torch.Tensor:
    """Order 2(q + 1) for a prime q = 1 mod 4: C = [[0, 1^T], [1, Q]], 0 -> [[1,-1],[-1,-1]], +-1 -> +-[[1,1],[1,-1]]."""
    C = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = _jacobsthal(q)
    A = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    B = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    return torch.kron(torch.eye(q + 1, dtype=torch.float64), A) + torch.kron(C, B)


@functools.lru_cache(maxsize=None)
def _base_matrix(m: int) -> torch.Tensor:
    """Unnormalized +-1 Hadamard matrix of order m in {1, 12, 20, 28}."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    H = {12: lambda: _paley1(11), 20: lambda: _paley1(19), 28: lambda: _paley2(13)}[m]()
    if not torch.equal(H @ H.T, m * torch.eye(m, dtype=torch.float64)):
        raise AssertionError(f"internal error: the order-{m} construction is not a Hadamard matrix")
    return H


def _split(n: int) -> tuple[int, int] | None:
    """(m, 2^k) with n = m * 2^k, m in {1, 12, 20, 28}, or None if n is not a valid size."""
    if not isinstance(n, int) or n < 1:
        return None
    pow2 = n & -n
    odd = n // pow2
    if odd == 1:
        return 1, n
    if odd in (3, 5, 7) and pow2 >= 4:
        return 4 * odd, pow2 // 4
    return None


def is_hadamard_size(n: int) -> bool:
    """True if hadamard_matrix(n) exists here: n = 2^k, or n = 3, 5 or 7 times 2^k with k >= 2."""
    return _split(n) is not None


def _check_size(n: int) -> tuple[int, int]:
    s = _split(n)
    if s is None:
        raise ValueError(
            f"no Hadamard matrix of size {n} here: sizes are 2^k or 12, 20, 28 times 2^k; "
            f"use choose_block_size(...) to pick a valid block"
        )
    return s


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Orthonormal Hadamard matrix of size n (H @ H.T = I), H = (H_m (x) H_{2^k}) / sqrt(n)."""
    m, p2 = _check_size(n)
    k = p2.bit_length() - 1
    H = _base_matrix(m)
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    for _ in range(k):
        H = torch.kron(H, h2)
    return (H / math.sqrt(n)).to(dtype)


def choose_block_size(k: int, max_block: int = 1024) -> int:
    """Largest valid Hadamard size h <= max_block dividing k (rule and examples in the module docstring)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"choose_block_size needs a positive dimension, got {k!r}")
    if max_block < 1:
        raise ValueError(f"max_block must be >= 1, got {max_block!r}")
    best = 1
    for h in range(1, min(k, max_block) + 1):
        if k % h == 0 and is_hadamard_size(h):
            best = h
    return best


def random_signs(n: int, seed: int | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n random +-1 values drawn from torch.Generator().manual_seed(seed); seed None gives all ones."""
    if seed is None:
        return torch.ones(n, dtype=dtype)
    g = torch.Generator().manual_seed(int(seed))
    return (torch.randint(0, 2, (n,), generator=g) * 2 - 1).to(dtype)


def _fwht_pow2(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Sylvester transform of the last dim (a power of two): x @ H_{2^k}."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


def hadamard_transform(x: torch.Tensor, block_size: int, seed: int | None = None, inverse: bool = False) -> torch.Tensor:
    """x @ Q (or x @ Q^T if inverse) with Q = blockdiag(diag(signs) @ H_h) over the last dim of x."""
    h = block_size
    m, p2 = _check_size(h)
    if x.dim() == 0 or x.shape[-1] % h:
        raise ValueError(
            f"hadamard_transform: last dim {tuple(x.shape)[-1:] or '()'} is not a multiple of block_size {h}; "
            f"pick a block with choose_block_size(last_dim)"
        )
    if not x.is_floating_point():
        raise ValueError(f"hadamard_transform needs a floating-point tensor, got {x.dtype}")
    out_dtype = x.dtype
    work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    lead, K = x.shape[:-1], x.shape[-1]
    y = x.to(work).reshape(*lead, K // h, m, p2)
    s = random_signs(h, seed, work).to(x.device).reshape(m, p2)
    if not inverse:
        y = y * s
    y = _fwht_pow2(y)
    if m > 1:  # (x @ (A (x) B)) viewed as [m, 2^k] is A^T X B; the inverse uses A instead of A^T
        A = _base_matrix(m).to(device=x.device, dtype=work)
        y = torch.einsum("...ab,ac->...cb", y, A if not inverse else A.T)
    y = y * (1.0 / math.sqrt(h))
    if inverse:
        y = y * s
    return y.reshape(*lead, K).to(out_dtype)


def rotate_weight(w: torch.Tensor, block_size: int, seed: int | None = None) -> torch.Tensor:
    """W @ Q for a weight [N, K] (rotation along in_features), so that (x Q)(W Q)^T = x W^T."""
    if w.dim() != 2:
        raise ValueError(f"rotate_weight expects a 2-D weight [N, K], got shape {tuple(w.shape)}")
    return hadamard_transform(w, block_size, seed)
