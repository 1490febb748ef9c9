"""fuse-cache-attention: the decode step's attention over index_copy'd caches becomes qcomp.cached_attention, with
the same outputs (fx and export captures), and attentions it must not touch stay as they are."""
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import qcomp  # noqa: E402
from qcomp.static_decode import StaticDecodeStep  # noqa: E402


@pytest.fixture(scope="module")
def step_and_inputs():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    step = StaticDecodeStep(transformers.LlamaForCausalLM(cfg).eval(), max_len=12).eval()
    kc, vc = step.new_cache(2)
    kc.normal_()
    vc.normal_()
    return step, (torch.randint(0, 96, (2, 1)), torch.tensor([5]), kc, vc)


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_decode_step_attention_reads_the_new_row(step_and_inputs, capture):
    step, inp = step_and_inputs
    base = qcomp.compile(step, budget=16, example_inputs=inp, pipeline="canonicalize", capture=capture)
    fused = qcomp.compile(step, budget=16, example_inputs=inp, pipeline="canonicalize,fuse-cache-attention",
                          capture=capture)
    stats = fused.report["passes"][-1]["stats"]
    assert stats == {"attentions_fused": 2, "attentions_apart": {}}
    atts = [n for n in fused.graph.nodes if n.op == "attention"]
    assert [n.attrs["target"] for n in atts] == ["qcomp.cached_attention.default"] * 2
    per_layer_copies = [n for n in fused.graph.nodes if "index_copy" in str(n.attrs.get("target"))
                        and n.type.shape is not None and len(n.type.shape) == 4]
    assert not per_layer_copies, "the per-layer cache copies are gone"
    with torch.no_grad():
        want, got, ref = base(*inp), fused(*inp), step(*inp)
    for a, b, r in zip(want, got, ref):
        assert torch.equal(a, b)
        assert torch.allclose(b, r, atol=1e-5)


def test_artifact_round_trip_keeps_the_fused_attention(step_and_inputs, tmp_path):
    step, inp = step_and_inputs
    fused = qcomp.compile(step, budget=16, example_inputs=inp, pipeline="canonicalize,fuse-cache-attention")
    fused.save(tmp_path / "a")
    loaded = qcomp.load(tmp_path / "a")
    assert sum(n.attrs.get("target") == "qcomp.cached_attention.default" for n in loaded.graph.nodes) == 2
    with torch.no_grad():
        want = fused(*inp)
        for a, b in zip(want, loaded(*inp)):
            assert torch.equal(a, b)
    # elsewhere, with `import qcomp` alone (the op registers itself when the graph names it)
    torch.save({"inp": inp, "want": want}, tmp_path / "io.pt")
    code = ("import sys, torch, qcomp; d = torch.load(sys.argv[2]); m = qcomp.load(sys.argv[1]); "
            "got = m(*d['inp']); assert all(torch.equal(a, b) for a, b in zip(got, d['want'])), 'differs'")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), str(tmp_path / "io.pt")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


class _Causal(torch.nn.Module):
    """An attention that must stay: its key is an index_copy that also feeds the output, and it is causal."""

    def forward(self, q, cache, new, pos):
        k = cache.index_copy(2, pos, new)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True)
        return y, k


def test_attentions_it_must_not_touch():
    q, cache, new = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 1, 8)
    inp = (q, cache, new, torch.tensor([2]))
    c = qcomp.compile(_Causal(), budget=16, example_inputs=inp, pipeline="canonicalize,fuse-cache-attention")
    apart = c.report["passes"][-1]["stats"]["attentions_apart"]
    assert len(apart) == 1 and "is_causal" in next(iter(apart.values()))
    assert all(n.attrs["target"] != "qcomp.cached_attention.default" for n in c.graph.nodes if n.op == "attention")
