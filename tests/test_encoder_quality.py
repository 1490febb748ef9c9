"""Encoder quality: the data-free sensitivity of an encoder (token ids in, hidden states out) uses a
cosine metric on its output vectors, not a KL over a softmax of hidden features (issue #7)."""
import pytest
import torch
from torch import nn

import qcomp
from qcomp.allocation.sensitivity import (
    SensitivityConfig, _main_output, _Metric, auto_metric, measure_sensitivity,
)
from qcomp.capture import capture_model
from qcomp.models.tiny import builtin_model
from qcomp.runtime.reference import ReferenceRuntime

from noise_delta import all_layers_noise_delta

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyEncoder(nn.Module):
    """Token ids [B, T] -> hidden states [B, T, 64] (an embedding, one MLP block, a LayerNorm)."""

    def __init__(self, vocab: int = 200, d: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, d)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, ids):
        h = self.emb(ids)
        return self.norm(h + self.down(torch.nn.functional.gelu(self.up(h))))


@pytest.fixture(scope="module")
def encoder():
    m = TinyEncoder()
    x = (torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(1)),)
    g = capture_model(m, x)
    return m, g, x, [n.name for n in g.linear_layers()]


def test_auto_metric_is_cosine_for_hidden_states_kl_for_logits_mse_for_floats(encoder):
    _, g, x, _ = encoder
    assert auto_metric(g, x, _main_output(ReferenceRuntime(g).run(*x))) == "cosine"
    lm, lx = builtin_model("tiny-llama")
    lg = capture_model(lm, lx)
    assert auto_metric(lg, lx, _main_output(ReferenceRuntime(lg).run(*lx))) == "kl"
    mlp = nn.Sequential(nn.Linear(16, 8))
    fx = (torch.randn(4, 16),)
    fg = capture_model(mlp, fx)
    assert auto_metric(fg, fx, _main_output(ReferenceRuntime(fg).run(*fx))) == "mse"


def test_cosine_metric_is_scale_invariant_and_zero_at_the_reference():
    torch.manual_seed(0)
    ref = torch.randn(2, 5, 16)
    m = _Metric("cosine", ref, (torch.zeros(2, 5, dtype=torch.int64),))
    assert m.delta(ref) == pytest.approx(0.0, abs=1e-12)
    assert m.delta(3.0 * ref) == pytest.approx(0.0, abs=1e-12)
    assert m.delta(-ref) == pytest.approx(2.0)
    other = ref.clone()
    other[0, 0] = torch.randn(16)
    rows = torch.nn.functional.cosine_similarity(other.reshape(-1, 16), ref.reshape(-1, 16), dim=-1)
    assert m.delta(other) == pytest.approx(float((1 - rows).mean()), rel=1e-6)


def test_encoder_sensitivity_uses_cosine_and_is_quadratic_in_the_noise(encoder, tmp_path):
    """1 - cos of small output perturbations is second order: Δ/t² nearly constant over the levels."""
    _, g, x, layers = encoder
    s = measure_sensitivity(g, layers, SensitivityConfig(levels=(0.02, 0.05, 0.1)), example_inputs=x,
                            cache_dir=tmp_path, progress=False)
    assert s.metric == "cosine"
    for name in layers:
        ratios = s.linearity(name)
        assert s.alphas[name] > 0
        assert max(ratios) == pytest.approx(min(ratios), rel=0.2)


def test_cosine_alphas_predict_joint_noise_on_an_encoder(encoder):
    """Linearity theorem for the cosine metric: Δ of noise in all layers ≈ Σ α_l t² (within 25 %)."""
    _, g, x, layers = encoder
    s = measure_sensitivity(g, layers, SensitivityConfig(levels=(0.05, 0.1)), example_inputs=x, cache_dir=False,
                            progress=False)
    t = 0.05
    measured = all_layers_noise_delta(g, layers, x, t, "cosine")
    assert measured == pytest.approx(sum(s.alphas.values()) * t * t, rel=0.25)


def test_allocate_bits_on_an_encoder_reports_the_cosine_metric(encoder, tmp_path):
    m, _, x, _ = encoder
    cm = qcomp.compile(m, budget=4.0, example_inputs=x, cache_dir=str(tmp_path))
    alloc = cm.report["allocation"]
    assert alloc["metric"] == "cosine"
    assert alloc["avg_bits"] <= 4.0 + 1e-9
    y, ref = cm(*x), m(*x)
    cos = torch.nn.functional.cosine_similarity(y.reshape(-1, 64), ref.reshape(-1, 64), dim=-1)
    assert float(cos.mean()) > 0.95
