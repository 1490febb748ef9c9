"""fuse-norm and fuse-residual: the RMSNorm before a qlinear applied in its kernel (qlinear {norm: {eps}} with the
weight as args[6]) and the residual add after it in its epilogue (args[7]); the same function in every runtime
(reference bit for bit, fx lowering, the generated kernels in the interpreter, a saved artifact), and what they must
leave alone."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import qcomp
from qcomp.qir import print_graph
from qcomp.qir.verifier import VerificationError, verify

from conftest import FUSION_BASE, compile_quietly, forced_kernel_error, fresh_token, pass_stats


FUSED = FUSION_BASE + ",fuse-residual,fuse-norm"


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_norms_and_residuals_move_into_the_qlinears(tiny_decode, capture):
    model, inputs = tiny_decode
    plain = compile_quietly(model, inputs, FUSION_BASE, capture)
    fused = compile_quietly(model, inputs, FUSED, capture)
    assert pass_stats(fused, "fuse-residual") == {"adds_fused": 4, "left_alone": {}}  # o_proj and down, 2 layers
    # the final norm feeds the float lm_head (a linear, not a qlinear): left alone, not listed
    assert pass_stats(fused, "fuse-norm") == {"norms_fused": 4, "qlinears": 4, "left_alone": {}}
    q = [n for n in fused.graph.nodes if n.op == "qlinear"]
    normed = [n.attrs["layer"] for n in q if n.attrs.get("norm")]
    assert normed == ["model.layers.0.self_attn.q_k_v_proj", "model.layers.0.mlp.gate_up_proj",
                      "model.layers.1.self_attn.q_k_v_proj", "model.layers.1.mlp.gate_up_proj"]
    assert all(n.attrs["norm"] == {"eps": 1e-6} and "_rms_" in n.attrs["kernel"]["gemv"] and
               "_rms" not in n.attrs["kernel"]["gemm"] for n in q if n.attrs.get("norm"))
    assert sum(len(n.args) == 8 and n.args[7] is not None for n in q) == 4
    assert [n.attrs["kind"] for n in fused.graph.nodes if n.op == "norm"] == ["rms"]  # the final norm stays
    assert not any(n.op == "elementwise" and n.attrs.get("target") in ("operator.add", "aten.add.Tensor") and
                   any(fused.graph.node(a).op == "qlinear" for a in n.args if hasattr(a, "name"))
                   for n in fused.graph.nodes)
    verify(fused.graph)
    x = fresh_token(inputs, 7)
    with torch.no_grad():
        for a, b in zip(plain(*x), fused(*x)):
            assert torch.equal(a, b)  # the reference computes the norm and the add as before: bit for bit


def test_ir_text(tiny_decode):
    text = print_graph(compile_quietly(*tiny_decode, FUSED).graph)
    lines = text.splitlines()
    qkv = next(ln for ln in lines if ln.startswith("%model_layers_1_self_attn_q_k_v_proj = qlinear("))
    # the qkv projection reads the previous layer's residual stream (the down projection's node) and the norm weight
    assert qkv.startswith("%model_layers_1_self_attn_q_k_v_proj = qlinear(%model_layers_0_mlp_down_proj, ")
    assert ", None, None, %p_model_layers_1_input_layernorm_weight, None) {" in qkv
    assert "norm: {eps: 1e-06}" in qkv
    o = next(ln for ln in lines if ln.startswith("%model_layers_1_self_attn_o_proj = qlinear("))
    assert ", None, None, None, %model_layers_0_mlp_down_proj) {" in o


def test_kernels_in_the_interpreter_match_the_reference(tiny_decode, monkeypatch):
    """The fx lowering calls torch.ops.qcomp.qlinear_fused; forced onto the generated kernels (CPU interpreter; one
    token, so the gemv applies the norm and every kernel adds its residual) it matches the reference path."""
    pytest.importorskip("triton")
    from qcomp.runtime.fx_lowering import to_graph_module

    model, inputs = tiny_decode
    gm = to_graph_module(compile_quietly(model, inputs, FUSED).graph)
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target.__name__ == "qlinear_call"]
    assert sum(n.args[15] is not None for n in calls) == 4 and sum(n.args[17] is not None for n in calls) == 4
    err = forced_kernel_error(gm, fresh_token(inputs, 11), monkeypatch)
    assert 0 < err < 2e-2, err  # 0: the kernels did not run


def test_artifact_round_trip(tiny_decode, tmp_path):
    model, inputs = tiny_decode
    fused = compile_quietly(model, inputs, FUSED)
    fused.save(tmp_path / "a")
    back = qcomp.load(tmp_path / "a")
    assert sum(n.attrs.get("norm") is not None for n in back.graph.nodes) == 4
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(back(*inputs), fused(*inputs)))


class _Leaky(nn.Module):
    """Norms and adds that must stay: a norm that also feeds a sum, a norm without a weight, an add that broadcasts,
    and a qlinear whose output is read twice."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.n1, self.n2 = nn.RMSNorm(128, eps=1e-5), nn.RMSNorm(128, eps=1e-5, elementwise_affine=False)
        self.a, self.b, self.c = (nn.Linear(128, 128, bias=False), nn.Linear(128, 128, bias=False),
                                  nn.Linear(128, 128, bias=False))

    def forward(self, x):
        h = self.n1(x)
        y = self.a(h) + h.sum(-1, keepdim=True)  # the norm feeds a sum too; the add broadcasts
        z = self.b(self.n2(y))
        return z + z.mean() + self.c(x) + x  # z is read twice; c's add is fusable (x is bf16 [1, 3, 128])


def test_what_it_must_leave_alone():
    model = _Leaky().to(torch.bfloat16)
    x = torch.randn(1, 3, 128).to(torch.bfloat16)
    compiled = compile_quietly(model, (x,), FUSED)
    res, nrm = pass_stats(compiled, "fuse-residual"), pass_stats(compiled, "fuse-norm")
    assert nrm["norms_fused"] == 0, nrm  # (n2, without a weight, is not captured as a norm node at all)
    assert nrm["left_alone"] == {"n1": "user %sum_1 is a call_method, not a qlinear"}
    assert res["adds_fused"] == 1
    assert any("broadcast" in v for v in res["left_alone"].values())
    assert any("other users" in v for v in res["left_alone"].values())
    assert torch.equal(compiled(x), compile_quietly(model, (x,), FUSION_BASE)(x))


def test_verifier_checks_the_fusions(tiny_decode):
    g = compile_quietly(*tiny_decode, FUSED).graph.copy()
    qkv = next(n for n in g.nodes if n.op == "qlinear" and n.attrs.get("norm"))
    eps = qkv.attrs.pop("norm")
    with pytest.raises(VerificationError, match="exactly when it has the attr norm"):
        verify(g)
    qkv.attrs["norm"] = {"eps": 1}
    with pytest.raises(VerificationError, match="norm attr must be"):
        verify(g)
    qkv.attrs["norm"] = eps
    qkv.attrs["glu"] = True
    with pytest.raises(VerificationError):
        verify(g)
    qkv.attrs.pop("glu")
    qkv.args = qkv.args[:7]
    with pytest.raises(VerificationError, match="norm_weight, residual"):
        verify(g)
