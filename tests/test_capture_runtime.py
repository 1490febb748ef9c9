"""Capture every model kind into QIR, round-trip its text, and check the reference runtime against the
original model (fp32, max relative error < 1e-5)."""
import pytest
import torch

from qcomp.capture import CaptureError, capture_model
from qcomp.models.tiny import builtin_model
from qcomp.qir import parse_graph, print_graph
from qcomp.qir.verifier import verify
from qcomp.runtime.reference import ReferenceRuntime


def _main_output(out):
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        if key in out:
            return out[key]
    raise AssertionError(f"no tensor output in {type(out)}")


def capture_and_check(model, inputs, other_inputs=None):
    g = capture_model(model, inputs)
    verify(g)
    text = print_graph(g)
    g2 = parse_graph(text)
    assert print_graph(g2) == text
    g2.params = g.params
    verify(g2)
    rt = ReferenceRuntime(g2)
    for inp in [inputs] + ([other_inputs] if other_inputs else []):
        with torch.no_grad():
            ref = _main_output(model(*inp))
        out = _main_output(rt.run(*inp))
        assert out.shape == ref.shape
        rel = ((out - ref).abs().max() / ref.abs().max()).item()
        assert rel < 1e-5, rel
    return g


def _layers(g):
    return [n.attrs["layer"] for n in g.nodes if n.op == "linear"]


def test_mlp_fx():
    model, inputs = builtin_model("tiny-mlp")
    g = capture_and_check(model, inputs, (torch.randn(7, 64),))
    assert g.attrs["capture"] == "fx" and _layers(g) == ["fc1", "fc2", "fc3"]


def test_llama_block_fx():
    model, inputs = builtin_model("tiny-llama")
    g = capture_and_check(model, inputs, (torch.randint(0, 256, (3, 9)),))
    assert "layers.1.mlp.down_proj" in _layers(g)
    assert sum(n.op == "norm" and n.attrs["kind"] == "rms" for n in g.nodes) == 5


def _hf_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_hf_llama_export_dynamic():
    model = _hf_llama()
    g = capture_and_check(model, (torch.randint(0, 128, (2, 12)),), (torch.randint(0, 128, (3, 7)),))
    assert g.attrs["capture"] == "export" and g.attrs["dynamic"]
    assert "model.layers.0.self_attn.q_proj" in _layers(g) and "lm_head" in _layers(g)
    assert sum(n.op == "norm" for n in g.nodes) == 5


def test_hf_bert_export():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128, max_position_embeddings=64)).eval()
    g = capture_and_check(model, (torch.randint(0, 100, (2, 10)),), (torch.randint(0, 100, (1, 5)),))
    assert "encoder.layer.1.output.dense" in _layers(g)
    assert any(n.op == "norm" and n.attrs["kind"] == "layer" for n in g.nodes)


def test_uncapturable_model_names_the_problem():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            if x.sum().item() > 0:  # data-dependent control flow: fx fails, export fails
                return self.fc(x)
            return torch.nonzero(x).float()

    with pytest.raises(CaptureError) as e:
        capture_model(Branchy(), (torch.randn(2, 4),))
    msg = str(e.value)
    assert "Branchy" in msg and "torch.fx" in msg and "torch.export" in msg and "What to try" in msg


@pytest.mark.slow
def test_smollm2_real(smollm2_dir):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    g = capture_and_check(model, (torch.randint(0, 49152, (2, 16)),), (torch.randint(0, 49152, (1, 33)),))
    layers = _layers(g)
    assert len(layers) == 30 * 7 + 1 and "model.layers.3.mlp.down_proj" in layers and layers[-1] == "lm_head"


@pytest.mark.slow
def test_minilm_real(minilm_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    g = capture_and_check(model, (torch.randint(0, 30000, (2, 12)),), (torch.randint(0, 30000, (3, 20)),))
    assert len(_layers(g)) == 6 * 6 + 1  # q, k, v, attn out, intermediate, output per layer + pooler
