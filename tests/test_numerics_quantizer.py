"""quantize_weight / dequantize_weight invariants for every grid, scale, bits, p and group size."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcomp.numerics import quantizer
from qcomp.numerics.grids import normal_grid
from qcomp.numerics.quant_spec import SCALE_METHODS, QuantSpec, QuantSpecError
from qcomp.numerics.quantizer import (
    dequantize_weight,
    gaussian_mse,
    nearest_points,
    quantize_weight,
    relative_mse,
)


def all_specs(groups=(16, 64, -1)):
    for grid, scales in SCALE_METHODS.items():
        for scale in scales:
            for p in ((1, 2) if grid == "normal" else (1,)):
                for bits in range(1, 8 // p + 1):
                    for g in groups:
                        yield QuantSpec(bits=bits, grid=grid, p=p, group_size=g, scale=scale)


def _w(n=12, k=128, seed=0, dtype=torch.float32):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("spec", list(all_specs()), ids=lambda s: f"{s.short()}-{s.scale}")
def test_shapes_ranges_and_roundtrip(spec):
    w = _w()
    q = quantize_weight(w, spec)
    n, k = w.shape
    g = spec.group(k)
    assert q.codes.shape == (n, k // spec.p) and q.codes.dtype == torch.uint8
    assert int(q.codes.max()) < spec.n_points
    assert q.scales.shape == (n, k // g) and q.scales.dtype == torch.float16
    assert q.lut.shape == (spec.n_points, spec.p) and q.lut.dtype == torch.float32
    assert (q.offsets is not None) == spec.has_offset
    w_hat = dequantize_weight(q, spec)
    assert w_hat.shape == w.shape and torch.isfinite(w_hat).all()
    # symmetric 1-bit absmax puts its two levels at +-max|w| and is the only spec worse than zeroing
    assert relative_mse(w, w_hat) < (10.0 if spec.bits == 1 else 0.5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.sampled_from([16, 32, 128]), st.sampled_from(["f16", "bf16", "f32"]), st.integers(0, 999))
def test_uniform_absmax_error_bound(bits, g, sdt, seed):
    w = _w(6, 256, seed) * 10 ** (seed % 5 - 2)
    for grid in ("uniform", "uniform_asym"):
        spec = QuantSpec(bits=bits, grid=grid, group_size=g, scale="absmax", scale_dtype=sdt)
        q = quantize_weight(w, spec)
        err = (dequantize_weight(q, spec) - w).abs().reshape(6, -1, g)
        scale = q.scales.float().reshape(6, -1, 1)
        # scale/2, plus what rounding scale (clamp at the ends) and offset to their dtype can add (roundoff u)
        u = {"f16": 2**-11, "bf16": 2**-8, "f32": 2**-24}[sdt]
        amax = w.abs().reshape(6, -1, g).amax(-1, keepdim=True)
        slack = u * (2**bits * scale + amax) + 1e-6 * amax
        assert torch.all(err <= scale / 2 + slack)


@pytest.mark.parametrize("bits,p", [(b, 1) for b in range(1, 9)] + [(b, 2) for b in range(1, 5)])
def test_normal_grid_relative_mse_on_gaussian(bits, p):
    w = _w(64, 1024, seed=bits)
    spec = QuantSpec(bits=bits, grid="normal", p=p, group_size=1024, scale="rms", scale_dtype="f32")
    r = relative_mse(w, dequantize_weight(quantize_weight(w, spec), spec))
    assert r == pytest.approx(normal_grid(bits, p)[1], rel=0.10)
    assert gaussian_mse(spec) == normal_grid(bits, p)[1]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_uniform_gauss_matches_expected_mse(bits):
    w = _w(64, 1024, seed=bits)
    spec = QuantSpec(bits=bits, grid="uniform", group_size=1024, scale="gauss")
    r = relative_mse(w, dequantize_weight(quantize_weight(w, spec), spec))
    assert r == pytest.approx(gaussian_mse(spec), rel=0.10)


@pytest.mark.parametrize("grid", ["uniform", "uniform_asym"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_mse_scale_not_worse_than_absmax(grid, bits):
    w = _w(32, 256, seed=bits)
    w[:, 5] *= 8  # outliers make clipping worthwhile
    errs = {}
    for scale in ("absmax", "mse"):
        spec = QuantSpec(bits=bits, grid=grid, group_size=64, scale=scale)
        errs[scale] = relative_mse(w, dequantize_weight(quantize_weight(w, spec), spec))
    assert errs["mse"] <= errs["absmax"] * (1 + 1e-6)


def test_gaussian_mse_for_searched_scales_is_consistent():
    spec = QuantSpec(bits=3, grid="uniform", group_size=128, scale="mse")
    t2 = gaussian_mse(spec)
    w = _w(128, 1024, seed=5)
    assert relative_mse(w, dequantize_weight(quantize_weight(w, spec), spec)) == pytest.approx(t2, rel=0.05)
    assert gaussian_mse(QuantSpec(bits=3, grid="uniform", group_size=16)) < gaussian_mse(QuantSpec(bits=3, grid="uniform", group_size=1024))


def test_chunking_does_not_change_results(monkeypatch):
    w = _w(40, 256, seed=3)
    for spec in (QuantSpec(bits=3, grid="normal", p=2, group_size=64, scale="rms"),
                 QuantSpec(bits=4, grid="uniform_asym", group_size=32, scale="mse")):
        full = quantize_weight(w, spec)
        monkeypatch.setattr(quantizer, "CHUNK_ELEMS", 3 * 256)
        small = quantize_weight(w, spec)
        monkeypatch.undo()
        assert torch.equal(full.codes, small.codes) and torch.equal(full.scales, small.scales)


@pytest.mark.parametrize("bits", [3, 4])  # 64 points: full comparison; 256 points: raster search
def test_nearest_points_p2_matches_brute_force(bits):
    lut = normal_grid(bits, 2)[0]
    z = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0)) * 1.3
    z[:50] *= 8  # some outside the raster
    idx = nearest_points(z, lut, chunk=7777)
    d = torch.cdist(z.double(), lut.double())
    assert torch.allclose(d.gather(1, idx[:, None])[:, 0], d.min(-1).values, atol=1e-6)


def test_zero_groups_and_low_precision_inputs():
    w = _w(4, 128, dtype=torch.bfloat16)
    w[1] = 0
    for spec in (QuantSpec(bits=2, grid="normal", p=2, group_size=64, scale="rms"),
                 QuantSpec(bits=4, grid="uniform", group_size=64, scale="gauss"),
                 QuantSpec(bits=4, grid="uniform_asym", group_size=64, scale="mse")):
        w_hat = dequantize_weight(quantize_weight(w, spec), spec, dtype=torch.bfloat16)
        assert w_hat.dtype == torch.bfloat16 and torch.isfinite(w_hat.float()).all()
        assert torch.all(w_hat[1] == 0)


def test_bad_inputs():
    spec = QuantSpec(bits=4, group_size=64)
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(torch.randn(64), spec)
    with pytest.raises(QuantSpecError, match="multiple of group_size"):
        quantize_weight(torch.randn(4, 96), spec)
    with pytest.raises(ValueError, match="floating-point"):
        quantize_weight(torch.ones(4, 64, dtype=torch.int32), spec)
    w = torch.randn(4, 64)
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantize_weight(w, spec)
    q = quantize_weight(torch.randn(4, 64), spec)
    with pytest.raises(ValueError, match="lut"):
        dequantize_weight(q, QuantSpec(bits=3, group_size=64))
