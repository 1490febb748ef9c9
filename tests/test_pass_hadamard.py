"""insert-hadamard and fuse-hadamard: exact float equivalence (float64), structure, golden IR, tied weights.

The float64 checks need the runtime's RMSNorm to compute in float64: `rms_norm_reference` upcasts to
float32 only (HF semantics), which rounds a float64 check to ~1e-7 as soon as the residual stream is
rotated. The `f64_norms` fixture computes it in max(float32, x.dtype) for these tests.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import assert_golden
from qcomp.capture import capture_model
from qcomp.pass_manager import PassContext, PassManager, parse_pipeline
from qcomp.qir import Graph, parse_graph, print_graph
from qcomp.runtime import reference
from qcomp.runtime.reference import ReferenceRuntime

TOL = 1e-9


def _rms_norm_f64(x, weight, eps):
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else weight * y


@pytest.fixture
def f64_norms(monkeypatch):
    monkeypatch.setattr(reference, "rms_norm_reference", _rms_norm_f64)


def run_pipeline(g: Graph, pipeline: str, **options) -> tuple[Graph, list]:
    """Run the passes of `pipeline`, each with `options` (as pass options)."""
    steps = [(name, {**opts, **options}) for name, opts in parse_pipeline(pipeline)]
    pm = PassManager(steps)
    out = pm.run(g, PassContext())
    return out, pm.records


def tensors_of(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in tensors_of(o)]


def max_rel_error(g_ref: Graph, g: Graph, *inputs) -> float:
    """max over outputs of max|y - y_ref| / max|y_ref|."""
    a = tensors_of(ReferenceRuntime(g_ref).run(*inputs))
    b = tensors_of(ReferenceRuntime(g).run(*inputs))
    assert len(a) == len(b)
    return max(float((y - x).abs().max() / x.abs().max()) for x, y in zip(a, b))


def check_equivalence(model: nn.Module, inputs: tuple, capture: str = "auto", insert: dict | None = None,
                      fuse: dict | None = None) -> dict:
    """Capture in float64, run canonicalize | insert | insert+fuse; return the graphs and errors."""
    model = model.to(torch.float64).eval()
    g0 = capture_model(model, inputs, method=capture)
    g1, _ = run_pipeline(g0, "canonicalize")
    snapshot = {k: (v, v.clone()) for k, v in g1.params.items()}
    g2, rec2 = run_pipeline(g1, "insert-hadamard", **(insert or {}))
    g3, rec3 = run_pipeline(g2, "fuse-hadamard", **(fuse or {}))
    for k, (t, copy) in snapshot.items():  # passes never mutate their input's tensors
        assert g1.params[k] is t and torch.equal(t, copy), k
    return {"float": g1, "insert": g2, "fuse": g3, "insert_stats": rec2[-1].stats, "fuse_stats": rec3[-1].stats,
            "err_insert": max_rel_error(g1, g2, *inputs), "err_fuse": max_rel_error(g1, g3, *inputs)}


def rotated_layers(g: Graph) -> list[str]:
    """Layers of the linears that still read an online rotate."""
    users = g.users()
    return sorted(u.attrs.get("layer") for r in g.find("rotate") for u in users[r.name] if u.op == "linear")


# -- a hand-written decoder block: before/after pairs and golden IR ------------------------------------

def toy_decoder(seed: int = 0) -> Graph:
    from conftest import REPO

    g = parse_graph((REPO / "tests" / "golden" / "hadamard" / "toy_decoder.qir").read_text())
    gen = torch.Generator().manual_seed(seed)
    for n in g.find("param"):
        shape = n.tensor_type.shape
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) / shape[-1] ** 0.5
        g.params[n.attrs["target"]] = t + 1.0 if len(shape) == 1 else t
    return g


def toy_ids() -> torch.Tensor:
    return torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(3))


def test_toy_decoder_golden_and_exact(f64_norms):
    g = toy_decoder()
    g2, _ = run_pipeline(g, "insert-hadamard", max_block=8)
    g3, rec = run_pipeline(g2, "fuse-hadamard", max_block=8)
    assert_golden(print_graph(g2), "hadamard/toy_decoder.insert.qir")
    assert_golden(print_graph(g3), "hadamard/toy_decoder.fuse.qir")
    assert max_rel_error(g, g2, toy_ids()) < TOL
    assert max_rel_error(g, g3, toy_ids()) < TOL
    # only the rotations in front of o and down stay online; every norm lost its weight
    assert rotated_layers(g3) == ["block.down", "block.o"]
    assert all(n.args[1] is None for n in g3.find("norm"))
    stats = rec[-1].stats
    assert (stats["online_before"], stats["online_after"]) == (4, 2)
    assert stats["regions"][0]["norms_folded"] == 3 and stats["regions"][0]["writers"] == 2


def test_tied_lm_head_gets_its_own_tensor_when_transforms_differ(f64_norms):
    g = toy_decoder()
    g3, _ = run_pipeline(*run_pipeline(g, "insert-hadamard")[:1], "fuse-hadamard")
    emb, head = g3.node("x"), g3.node("logits")
    # the final norm's weight went into lm_head only: the table can no longer be shared
    assert emb.args[0] != head.args[1]
    assert not torch.equal(g3.param(emb.args[0]), g3.param(head.args[1]))
    assert max_rel_error(g, g3, toy_ids()) < TOL


def test_tied_weight_split_when_only_lm_head_is_rotated(f64_norms):
    g = toy_decoder()
    g2, _ = run_pipeline(g, "insert-hadamard", skip="")
    emb, head = g2.node("x"), g2.node("logits")
    assert head.attrs["hadamard"]["online"] is True
    assert g2.param(emb.args[0]) is g.params["emb.weight"]  # the embedding still reads the original table
    assert g2.node(head.args[1]).attrs["target"] != "emb.weight"
    assert max_rel_error(g, g2, toy_ids()) < TOL


def test_tied_weight_stays_shared_when_both_readers_need_the_same_rotation(f64_norms):
    g = toy_decoder()
    g.node("hf").args = (g.node("hf").args[0], None, None)  # no final norm weight to fold into lm_head
    g.erase(g.node("p_nf"))
    g3, _ = run_pipeline(*run_pipeline(g, "insert-hadamard")[:1], "fuse-hadamard")
    assert g3.node("x").args[0] == g3.node("logits").args[1]
    assert max_rel_error(g, g3, toy_ids()) < TOL


def test_rotate_pairs_cancel_and_duplicates_merge(f64_norms):
    g = toy_decoder()
    g2, _ = run_pipeline(g, "insert-hadamard")
    # in front of block.o: a duplicate of its rotate, then a rotate/inverse pair
    from qcomp.analysis.rewrite import add_rotate
    from qcomp.qir import Ref

    o = g2.node("o")
    r = g2.node(o.args[0])
    size, seed = r.attrs["size"], r.attrs["seed"]
    dup = add_rotate(g2, r.args[0].name, size, seed, False, before=o, name="dup")  # a copy of r
    a = add_rotate(g2, dup.name, size, seed, False, before=o, name="extra")
    b = add_rotate(g2, a.name, size, seed, True, before=o, name="extra_inv")  # cancels a
    o.args = (Ref(b.name),) + o.args[1:]
    g3, rec = run_pipeline(g2, "fuse-hadamard", residual=False)
    stats = rec[-1].stats
    assert stats["pairs_cancelled"] == 1 and stats["merged"] == 1
    assert g3.node("o").args[0] == Ref(r.name)
    assert max_rel_error(g, g3, toy_ids()) < TOL


# -- models --------------------------------------------------------------------------------------------

def tiny_llama_ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_tiny_llama_exact(f64_norms, capture):
    from qcomp.models.tiny import TinyLlama

    r = check_equivalence(TinyLlama(), (tiny_llama_ids(),), capture=capture)
    assert r["err_insert"] < TOL and r["err_fuse"] < TOL, (r["err_insert"], r["err_fuse"])
    assert r["insert_stats"]["rotated"] == 14  # 2 layers x 7 linears; lm_head skipped
    if not r["float"].find("norm"):
        pytest.xfail("fx capture decomposed TinyLlama's RMSNorm (is_rms_norm probes the module while tracing), "
                     "so no residual region can be formed")
    g = r["fuse"]
    assert rotated_layers(g) == sorted(f"layers.{i}.{m}" for i in range(2) for m in ("mlp.down_proj", "self_attn.o_proj"))
    for n in g.linear_layers():
        layer = n.attrs["layer"]
        if layer.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head")):
            assert n.attrs["hadamard"]["online"] is False, layer
        if layer.endswith(("o_proj", "down_proj")):
            assert n.attrs["hadamard_out"] == {"size": 128, "seed": 0} and n.attrs["hadamard"]["online"], layer


def _hf_llama(tied: bool):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=tied)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("tied", [False, True])
def test_hf_llama_export_exact(f64_norms, tied):
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    r = check_equivalence(_hf_llama(tied), (ids,))
    assert r["err_insert"] < TOL and r["err_fuse"] < TOL, (r["err_insert"], r["err_fuse"])
    g = r["fuse"]
    assert rotated_layers(g) == sorted(f"model.layers.{i}.{m}" for i in range(2) for m in ("mlp.down_proj", "self_attn.o_proj"))
    assert r["fuse_stats"]["online_after"] == 4 and len(r["fuse_stats"]["regions"]) == 1


def test_bert_keeps_online_rotations(f64_norms):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, max_position_embeddings=64)
    torch.manual_seed(0)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    r = check_equivalence(transformers.BertModel(cfg), (ids,))
    assert r["err_insert"] < TOL and r["err_fuse"] < TOL, (r["err_insert"], r["err_fuse"])
    s = r["fuse_stats"]
    assert s["regions"] == [] and s["online_after"] == s["online_before"] == r["insert_stats"]["online_rotations"]
    assert all(n.op != "norm" or n.args[1] is not None for n in r["fuse"].nodes)  # LayerNorms untouched


def test_layer_without_hadamard_block_is_left_alone(f64_norms):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(7, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    x = torch.randn(3, 7, dtype=torch.float64)
    r = check_equivalence(Odd(), (x,))
    assert r["insert_stats"]["no_block"] == ["a"] and r["insert_stats"]["rotated"] == 1
    assert r["err_insert"] < TOL and r["err_fuse"] < TOL


def test_param_added_to_the_stream_is_rotated_offline(f64_norms):
    class LearnedPositions(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.pos = nn.Embedding(40, 24), nn.Parameter(torch.randn(6, 24))
            self.norm, self.up, self.down = nn.RMSNorm(24), nn.Linear(24, 48), nn.Linear(48, 24)
            self.head = nn.Linear(24, 40)

        def forward(self, ids):
            x = self.emb(ids) + self.pos
            x = x + self.down(torch.relu(self.up(self.norm(x))))
            return self.head(x)  # no final norm: the head reads the stream directly

    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    r = check_equivalence(LearnedPositions(), (ids,), capture="fx")
    assert r["err_insert"] < TOL and r["err_fuse"] < TOL, (r["err_insert"], r["err_fuse"])
    region = r["fuse_stats"]["regions"][0]
    assert (region["params"], region["entries"], region["exits"]) == (1, [], [])
    assert rotated_layers(r["fuse"]) == ["down"]


def test_region_with_entry_and_exit_is_applied_only_when_it_pays(f64_norms):
    class FloatStream(nn.Module):
        def __init__(self, n_blocks: int):
            super().__init__()
            torch.manual_seed(0)
            self.norms = nn.ModuleList(nn.RMSNorm(16) for _ in range(n_blocks))
            self.ups = nn.ModuleList(nn.Linear(16, 32) for _ in range(n_blocks))
            self.downs = nn.ModuleList(nn.Linear(32, 16) for _ in range(n_blocks))

        def forward(self, x):  # the stream enters from the input and leaves to the output
            for norm, up, down in zip(self.norms, self.ups, self.downs):
                x = x + down(torch.relu(up(norm(x))))
            return x

    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    two = check_equivalence(FloatStream(2), (x,), capture="fx")  # removes 2 rotations, would add 2
    assert two["fuse_stats"]["regions"] == [] and two["err_fuse"] < TOL
    three = check_equivalence(FloatStream(3), (x,), capture="fx")  # removes 3, adds 2
    region = three["fuse_stats"]["regions"][0]
    assert (region["entries"], region["exits"], region["online_removed"], region["online_added"]) == (["x"], ["out"], 3, 2)
    assert three["fuse_stats"]["online_after"] == 3 + 2 and three["err_fuse"] < TOL, three["err_fuse"]
