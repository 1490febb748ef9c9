"""fuse-siblings (qlinears of one input and one spec -> one qlinear + slices) and allocate-bits(tie_siblings=True)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import qcomp
from qcomp.models.loading import load_model_ref
from qcomp.qir import print_graph

ROT = "canonicalize,insert-hadamard,fuse-hadamard(residual=False),allocate-bits(tie_siblings=True),quantize"


class Siblings(nn.Module):
    """Three linears read x (two of them with bias, one without); one reads their sum."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(128, 64, bias=False)
        self.b = nn.Linear(128, 32, bias=False)
        self.c = nn.Linear(128, 32, bias=True)
        self.out = nn.Linear(64, 16, bias=False)

    def forward(self, x):
        return self.out(self.a(x) + torch.cat([self.b(x), self.c(x)], -1))


def qlinears(compiled):
    return [n for n in compiled.graph.nodes if n.op == "qlinear"]


@pytest.fixture(scope="module")
def tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, inputs = load_model_ref("builtin:tiny-llama")
        plain = qcomp.compile(model, budget=3.5, example_inputs=inputs, pipeline=ROT + ",lower")
        fused = qcomp.compile(model, budget=3.5, example_inputs=inputs, pipeline=ROT + ",fuse-siblings,lower")
    return model, inputs, plain, fused


def test_fused_graph_computes_the_same_function(tiny):
    model, inputs, plain, fused = tiny
    assert len(qlinears(plain)) == 14 and len(qlinears(fused)) == 8  # per layer: qkv, o, gate_up, down
    stats = next(p["stats"] for p in fused.report["passes"] if p["name"] == "fuse-siblings")
    assert stats == {"groups_fused": 4, "qlinears_before": 14, "qlinears_after": 8, "kept_apart": {}}
    x = torch.randint(0, 256, inputs[0].shape, generator=torch.Generator().manual_seed(3))  # fresh tokens
    assert torch.equal(plain(x), fused(x))  # the same dequantized rows, the same products


def test_fused_ir_reads_naturally(tiny):
    text = print_graph(tiny[3].graph)
    assert ('%layers_0_self_attn_q_k_v_proj = qlinear(%layers_0_input_layernorm, %layers_0_self_attn_q_k_v_proj_qweight'
            in text)
    assert '%layers_0_self_attn_k_proj = call(%layers_0_self_attn_q_k_v_proj, -1, 128, 64) {target: "torch.narrow"}' \
        in text
    assert '%layers_1_mlp_up_proj = call(%layers_1_mlp_gate_up_proj, -1, 256, 256) {target: "torch.narrow"}' in text
    node = next(n for n in tiny[3].graph.nodes if n.name == "layers_0_self_attn_q_k_v_proj")
    assert node.attrs["fused"] == ["layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj"]
    assert node.attrs["n"] == 256 and node.attrs["layer"] == "layers.0.self_attn.q_k_v_proj"


def test_tied_allocation_gives_siblings_one_spec_within_budget(tiny):
    alloc = tiny[2].report["allocation"]
    assert alloc["avg_bits"] <= 3.5 and len(alloc["tied_groups"]) == 4
    by_node = {r["node"]: r for r in alloc["layers"]}
    for grp in alloc["tied_groups"]:
        assert len({by_node[m]["option"] for m in grp}) == 1, grp


def test_tying_only_restricts_the_allocation():
    from qcomp.allocation import LayerCandidates, allocate
    from qcomp.allocation.options import keep_option, option_for
    from qcomp.numerics.quant_spec import QuantSpec
    from qcomp.passes.allocate_bits import tied_candidates

    specs = [QuantSpec(bits=b, grid="uniform", group_size=64) for b in (2, 3, 4)]
    gen = torch.Generator().manual_seed(0)
    layers = []
    for i, (n, alpha) in enumerate([(64, 3.0), (32, 0.1), (48, 1.0)]):
        w = torch.randn(n, 128, generator=gen)
        opts = tuple(option_for(s, n, 128, rotate=False, error=float(torch.rand((), generator=gen)) / s.bits)
                     for s in specs)
        layers.append((type("N", (), {"name": f"l{i}"})(), w, opts + (keep_option(),)))
    alphas = {f"l{i}": a for i, a in enumerate([3.0, 0.1, 1.0])}
    free = allocate([LayerCandidates(n.name, int(w.numel()), alphas[n.name], o) for n, w, o in layers], 3.0)
    tied = allocate([tied_candidates(layers, alphas)], 3.0)
    assert tied.avg_bits <= 3.0 and free.avg_bits <= 3.0
    assert tied.objective >= free.objective - 1e-12
    assert len(tied.choices) == 1 and tied.choices[0].name == "l0+l1+l2"


def test_siblings_with_and_without_bias_stay_apart():
    m = Siblings().eval()
    x = torch.randn(4, 128)
    pipe = 'canonicalize,quantize(bits=4, grid="uniform", group_size=64)'
    plain = qcomp.compile(m, budget=4.0, example_inputs=(x,), pipeline=pipe)
    fused = qcomp.compile(m, budget=4.0, example_inputs=(x,), pipeline=pipe + ",fuse-siblings")
    stats = next(p["stats"] for p in fused.report["passes"] if p["name"] == "fuse-siblings")
    assert stats["groups_fused"] == 0 and list(stats["kept_apart"]) == ["a+b+c"]
    assert "differ in having bias" in stats["kept_apart"]["a+b+c"]
    assert torch.equal(plain(x), fused(x))
    m.c = nn.Linear(128, 32, bias=False)  # now all three fuse: a, b, c of n 64 + 32 + 32
    fused = qcomp.compile(m, budget=4.0, example_inputs=(x,), pipeline=pipe + ",fuse-siblings")
    plain = qcomp.compile(m, budget=4.0, example_inputs=(x,), pipeline=pipe)
    assert len(qlinears(fused)) == 2 and torch.allclose(plain(x), fused(x), atol=0, rtol=0)


def test_fused_artifact_round_trip(tiny, tmp_path):
    _, inputs, _, fused = tiny
    fused.save(tmp_path / "a")
    back = qcomp.load(tmp_path / "a")
    assert len(qlinears(back)) == 8
    assert torch.equal(back(*inputs), fused(*inputs))
