"""Tests for sensitivity α by noise injection: exact on a quadratic case, additive on a small LM, cached on disk."""
import pytest
import torch
from torch import nn

from qcomp.allocation.sensitivity import (
    SensitivityConfig, fit_slope, graph_hash, measure_sensitivity,
)
from qcomp.capture import capture_model
from qcomp.models.tiny import builtin_model
from noise_delta import all_layers_noise_delta


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_llama():
    m, x = builtin_model("tiny-llama")
    g = capture_model(m, x)
    return g, x, [n.name for n in g.linear_layers() if n.name != "lm_head"]


def test_fit_slope_is_exact_for_quadratic_deltas():
    assert fit_slope([0.1, 0.3], [2.5 * 0.01, 2.5 * 0.09]) == pytest.approx(2.5)


def test_output_mse_of_a_linear_layer_is_exactly_quadratic(tmp_path):
    """y = W x: Δ_mse(t) = ||t·Z x||² / ||W x||², so Δ/t² is the same at every level and equals α."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32, bias=False))
    x = (torch.randn(16, 64),)
    g = capture_model(model, x)
    name = g.linear_layers()[0].name
    s = measure_sensitivity(g, [name], SensitivityConfig(levels=(0.05, 0.2, 0.4), n_batches=2), example_inputs=x,
                            cache_dir=tmp_path, progress=False)
    assert s.metric == "mse"
    ratios = s.linearity(name)
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-4)
    assert s.alphas[name] == pytest.approx(ratios[0], rel=1e-4) and s.alphas[name] > 0


def test_alphas_predict_joint_noise_on_a_small_lm(tiny_llama):
    """Linearity theorem: KL of small noise in all layers at once ≈ Σ α_l t² (within 25 % at t = 0.03)."""
    g, x, layers = tiny_llama
    s = measure_sensitivity(g, layers, SensitivityConfig(levels=(0.05, 0.1)), example_inputs=x, cache_dir=False,
                            progress=False)
    assert s.metric == "kl" and all(a > 0 for a in s.alphas.values())
    t = 0.03
    measured = all_layers_noise_delta(g, layers, x, t, "kl")
    predicted = sum(s.alphas.values()) * t * t
    assert measured == pytest.approx(predicted, rel=0.25)


def test_cache_hits_and_misses(tiny_llama, tmp_path):
    g, x, layers = tiny_llama
    cfg = SensitivityConfig(levels=(0.05, 0.1), n_batches=1)
    first = measure_sensitivity(g, layers[:2], cfg, example_inputs=x, cache_dir=tmp_path, progress=False)
    assert first.cost["cached"] is False and first.cost["forwards"] == 1 + 2 * 2
    again = measure_sensitivity(g, layers[:2], cfg, example_inputs=x, cache_dir=tmp_path, progress=False)
    assert again.cost["cached"] and again.alphas == first.alphas and again.key == first.key
    other = measure_sensitivity(g, layers[:2], SensitivityConfig(levels=(0.05, 0.2), n_batches=1), example_inputs=x,
                                cache_dir=tmp_path, progress=False)
    assert other.key != first.key and other.cost["cached"] is False
    changed = g.copy()
    target = g.node(g.node(layers[0]).args[1]).attrs["target"]
    changed.params[target] = g.params[target] * 1.01
    assert graph_hash(changed) != graph_hash(g)
    assert len(list(tmp_path.glob("sensitivity-*.json"))) == 2


def test_calibrated_mode(tiny_llama, tmp_path):
    g, x, layers = tiny_llama
    cfg = SensitivityConfig(mode="calibrated", levels=(0.05, 0.1), metric="kl")
    with pytest.raises(ValueError, match="calibration"):
        measure_sensitivity(g, layers[:1], cfg, cache_dir=False, progress=False)
    b1 = [(torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3)),)]
    b2 = [(torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(4)),)]
    s1 = measure_sensitivity(g, layers[:1], cfg, calibration=b1, cache_dir=tmp_path, progress=False)
    s2 = measure_sensitivity(g, layers[:1], cfg, calibration=b2, cache_dir=tmp_path, progress=False)
    assert s1.key != s2.key and s1.alphas[layers[0]] > 0


def test_config_validation():
    with pytest.raises(ValueError, match="two distinct"):
        SensitivityConfig(levels=(0.1,))
    with pytest.raises(ValueError, match="mode"):
        SensitivityConfig(mode="magic")
    with pytest.raises(ValueError, match="metric"):
        SensitivityConfig(metric="ppl")
