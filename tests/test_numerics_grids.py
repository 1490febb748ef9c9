"""Gaussian grids: Lloyd-Max values, stored data, p = 2 grids, QuEST clipping."""
import json
import math

import pytest
import torch

from qcomp.numerics import grids
from qcomp.numerics.grids import (
    QUEST_ALPHA,
    normal_grid,
    normal_grid_points,
    uniform_gauss_mse,
    uniform_mse_for_step,
)
from qcomp.numerics.lloyd import scalar_lloyd_max, scalar_mse, vector_lloyd_2d

KNOWN_LLOYD_MAX = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}


@pytest.mark.parametrize("bits,known", KNOWN_LLOYD_MAX.items())
def test_lloyd_max_known_values(bits, known):
    _, mse = normal_grid(bits, 1)
    assert abs(mse - known) / known < 0.005
    _, fresh = scalar_lloyd_max(2**bits)
    assert abs(fresh - known) / known < 0.005


def test_one_bit_is_exact():
    lut, mse = normal_grid(1, 1)
    assert torch.allclose(lut[:, 0], torch.tensor([-1.0, 1.0]) * math.sqrt(2 / math.pi))
    assert mse == pytest.approx(1 - 2 / math.pi, rel=1e-9)


@pytest.mark.parametrize("n", [3, 7, 16, 100, 256])
def test_stored_p1_matches_generator(n):
    lut, mse = normal_grid_points(n, 1)
    fresh, fresh_mse = scalar_lloyd_max(n)
    assert torch.allclose(lut[:, 0].double(), fresh, atol=1e-6)
    assert mse == pytest.approx(fresh_mse, rel=1e-6)


def test_p1_grids_are_lloyd_fixed_points():
    for n in (2, 5, 64, 256):
        c = normal_grid_points(n, 1)[0][:, 0].double()
        assert torch.all(c[1:] > c[:-1])
        assert torch.allclose(c, -c.flip(0), atol=1e-6)
        # the stored MSE is the exact MSE of the stored (float32) points
        assert normal_grid_points(n, 1)[1] == pytest.approx(scalar_mse(c), rel=1e-9)


def test_mse_decreases_with_points_and_follows_panter_dite():
    mses = [normal_grid_points(n, 1)[1] for n in range(2, 257)]
    assert all(b < a for a, b in zip(mses, mses[1:]))
    # high-resolution limit: n^2 * MSE -> pi * sqrt(3) / 2
    assert 256**2 * mses[-1] == pytest.approx(math.pi * math.sqrt(3) / 2, rel=0.01)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_p2_grid_shape_and_mse_on_sample(bits):
    lut, mse = normal_grid(bits, 2)
    assert lut.shape == (4**bits, 2) and lut.dtype == torch.float32
    x = torch.randn(400_000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d2 = torch.cdist(x, lut.double()).min(-1).values.pow(2)
    assert float(d2.mean()) / 2 == pytest.approx(mse, rel=0.01)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_p2_beats_p1(bits):
    assert normal_grid(bits, 2)[1] < 0.97 * normal_grid(bits, 1)[1]


def test_p2_one_bit_equals_product_grid():
    assert normal_grid(1, 2)[1] == pytest.approx(normal_grid(1, 1)[1], rel=1e-3)


def test_p2_odd_sizes_stored_and_generated(monkeypatch):
    assert normal_grid_points(8, 2)[0].shape == (8, 2)
    # sizes that are not stored are generated on first use by the make_grids code (small settings here)
    monkeypatch.setattr(grids, "vector_lloyd_2d", lambda n: vector_lloyd_2d(n, m_train=64, m_eval=128, iters=50))
    grids._generated_p2.cache_clear()
    pts, mse = normal_grid_points(3, 2)
    grids._generated_p2.cache_clear()
    assert pts.shape == (3, 2) and pts.dtype == torch.float32
    assert normal_grid_points(4, 2)[1] < mse < normal_grid_points(2, 2)[1]


def test_data_files_versioned_and_small():
    total = 0
    for p in (1, 2):
        path = grids.grid_path(p)
        total += path.stat().st_size
        data = json.loads(path.read_text())
        assert data["version"] == grids.GRID_DATA_VERSION and data["p"] == p
    assert total < 1_000_000


@pytest.mark.parametrize(
    "call",
    [lambda: normal_grid(0, 1), lambda: normal_grid(5, 2), lambda: normal_grid_points(1, 1),
     lambda: normal_grid_points(257, 1), lambda: normal_grid_points(4, 3)],
)
def test_bad_grid_requests(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("bits", range(1, 9))
def test_quest_alpha_is_near_optimal(bits):
    n = 2**bits
    step = 2 * QUEST_ALPHA[bits] / (n - 1)
    mse = uniform_gauss_mse(bits)
    assert mse == pytest.approx(uniform_mse_for_step(bits, step))
    steps = torch.linspace(0.9 * step, 1.1 * step, 201).tolist()
    best = min(uniform_mse_for_step(bits, s) for s in steps)
    assert mse <= best * 1.002  # QuEST's rounded alphas: within 0.2% of the uniform optimum
    assert mse >= normal_grid(bits, 1)[1]  # never better than Lloyd-Max


def test_known_uniform_gauss_values():
    assert uniform_gauss_mse(2) == pytest.approx(0.1188, rel=2e-3)
    assert uniform_gauss_mse(3) == pytest.approx(0.03744, rel=2e-3)
    assert uniform_gauss_mse(4) == pytest.approx(0.01154, rel=2e-3)
