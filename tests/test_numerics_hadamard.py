"""Hadamard matrices and block rotations: orthogonality, fast = dense, block-size rule, errors."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcomp.numerics.hadamard import (
    choose_block_size,
    hadamard_matrix,
    hadamard_transform,
    is_hadamard_size,
    random_signs,
    rotate_weight,
)

VALID = [1, 2, 4, 8, 12, 16, 20, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 192, 224, 256, 384, 448, 640, 768, 1024]


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 28, 40, 56, 80, 160, 192, 256, 448, 768, 1024])
def test_hadamard_matrix_orthonormal(n):
    H = hadamard_matrix(n)
    assert H.dtype == torch.float64
    assert torch.allclose(H @ H.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(H.abs(), torch.full_like(H, n**-0.5), atol=1e-15)


def test_valid_sizes():
    assert [n for n in range(1, 130) if is_hadamard_size(n)] == [
        1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128
    ]
    for n in (0, -4, 6, 10, 14, 36, 44, 9 * 64):
        assert not is_hadamard_size(n)
    with pytest.raises(ValueError, match="choose_block_size"):
        hadamard_matrix(36)


@pytest.mark.parametrize(
    "k,h", [(4096, 1024), (576, 192), (1536, 768), (384, 384), (172, 4), (43, 1), (11008, 256), (14336, 1024)]
)
def test_choose_block_size_examples(k, h):
    assert choose_block_size(k) == h


@given(st.integers(1, 5000), st.sampled_from([16, 64, 128, 1024]))
def test_choose_block_size_is_largest_valid_divisor(k, cap):
    h = choose_block_size(k, cap)
    assert k % h == 0 and h <= cap and is_hadamard_size(h)
    assert not any(k % d == 0 and is_hadamard_size(d) for d in range(h + 1, min(k, cap) + 1))


def test_random_signs():
    s = random_signs(64, 3)
    assert torch.equal(s, random_signs(64, 3)) and not torch.equal(s, random_signs(64, 4))
    assert set(s.tolist()) <= {-1.0, 1.0}
    assert torch.equal(random_signs(5, None), torch.ones(5))


def _dense_q(h, blocks, seed):
    block = torch.diag(random_signs(h, seed, torch.float64)) @ hadamard_matrix(h)
    return torch.block_diag(*[block] * blocks)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(VALID), st.integers(1, 3), st.one_of(st.none(), st.integers(0, 2**31)), st.integers(1, 3))
def test_fast_equals_dense_and_roundtrip_f64(h, blocks, seed, rows):
    blocks = 1 if h >= 512 else blocks  # keep the dense reference small
    x = torch.randn(rows, 2, h * blocks, dtype=torch.float64)
    Q = _dense_q(h, blocks, seed)
    y = hadamard_transform(x, h, seed)
    assert torch.allclose(y, x @ Q, atol=1e-12)
    assert torch.allclose(hadamard_transform(x, h, seed, inverse=True), x @ Q.T, atol=1e-12)
    assert (hadamard_transform(y, h, seed, inverse=True) - x).abs().max() <= 1e-12
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([16, 28, 96, 256, 640]), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_low_precision_dtypes(h, dtype):
    x = torch.randn(4, 2 * h).to(dtype)
    y = hadamard_transform(x, h, seed=7)
    assert y.dtype == dtype
    ref = x.double() @ _dense_q(h, 2, 7)
    tol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    assert (y.double() - ref).abs().max() <= tol * ref.abs().max()
    back = hadamard_transform(y, h, seed=7, inverse=True)
    assert (back.double() - x.double()).abs().max() <= 2 * tol * x.double().abs().max()


def test_rotate_weight_preserves_linear():
    torch.manual_seed(0)
    x, w = torch.randn(5, 576, dtype=torch.float64), torch.randn(7, 576, dtype=torch.float64)
    h = choose_block_size(576)
    y = hadamard_transform(x, h, seed=11) @ rotate_weight(w, h, seed=11).T
    assert torch.allclose(y, x @ w.T, atol=1e-11)


def test_transform_errors():
    with pytest.raises(ValueError, match="multiple of block_size"):
        hadamard_transform(torch.randn(3, 100), 64)
    with pytest.raises(ValueError, match="no Hadamard matrix"):
        hadamard_transform(torch.randn(3, 72), 36)
    with pytest.raises(ValueError, match="floating-point"):
        hadamard_transform(torch.ones(2, 8, dtype=torch.int64), 8)
    with pytest.raises(ValueError, match="2-D"):
        rotate_weight(torch.randn(8), 8)
