"""fuse-glu: the MLP's silu(gate) * up read by the down projection's kernel (qlinear {glu: True}); the same function
in every runtime (reference, fx lowering, the generated kernels in the interpreter, a saved artifact), and the
products it must leave alone."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcomp
from qcomp.qir import print_graph
from qcomp.qir.verifier import VerificationError, verify

from conftest import FUSION_BASE, compile_quietly, forced_kernel_error, fresh_token, pass_stats


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_down_projection_reads_gate_up(tiny_decode, capture):
    model, inputs = tiny_decode
    plain = compile_quietly(model, inputs, FUSION_BASE, capture)
    fused = compile_quietly(model, inputs, FUSION_BASE + ",fuse-glu", capture)
    assert pass_stats(fused, "fuse-glu") == {"layers_fused": 2, "left_alone": {}}
    downs = [n for n in fused.graph.nodes if n.op == "qlinear" and n.attrs.get("glu")]
    assert [n.attrs["layer"] for n in downs] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert all("_glu_" in n.attrs["kernel"]["gemv"] and "_glu" not in n.attrs["kernel"]["gemm"] for n in downs)
    # lower names the kernels of the graph's activation dtype (bf16 here), as the runtime will pick them
    assert all("_bf16_" in n.attrs["kernel"]["gemv"] for n in fused.graph.nodes if n.op == "qlinear")
    assert not any(n.op == "elementwise" and "silu" in str(n.attrs.get("target")) for n in fused.graph.nodes)
    x = fresh_token(inputs, 7)
    with torch.no_grad():
        for a, b in zip(plain(*x), fused(*x)):
            assert torch.equal(a, b)  # the reference computes silu(gate) * up first: bit for bit


def test_glu_ir_text(tiny_decode):
    text = print_graph(compile_quietly(*tiny_decode, FUSION_BASE + ",fuse-glu").graph)
    line = next(ln for ln in text.splitlines() if ln.startswith("%model_layers_0_mlp_down_proj = qlinear("))
    assert line.startswith("%model_layers_0_mlp_down_proj = qlinear(%model_layers_0_mlp_gate_up_proj, "
                           "%model_layers_0_mlp_down_proj_qweight, ")
    assert line.endswith("glu: True} : bf16[1, 1, 128]")


def test_kernels_in_the_interpreter_match_the_reference(tiny_decode, monkeypatch):
    """The fx lowering calls torch.ops.qcomp.qlinear_fused (glu=True); forced onto the generated kernels (CPU interpreter; one
    token, so the gemv reads the two halves) it matches the same module on the reference path."""
    pytest.importorskip("triton")
    from qcomp.runtime.fx_lowering import to_graph_module

    model, inputs = tiny_decode
    gm = to_graph_module(compile_quietly(model, inputs, FUSION_BASE + ",fuse-glu").graph)
    assert sum(n.op == "call_function" and len(n.args) > 14 and n.args[14] is True for n in gm.graph.nodes) == 2  # glu
    err = forced_kernel_error(gm, fresh_token(inputs, 11), monkeypatch)
    assert 0 < err < 2e-2, err  # 0: the kernels did not run


def test_artifact_round_trip_with_import_qcomp_alone(tiny_decode, tmp_path):
    model, inputs = tiny_decode
    fused = compile_quietly(model, inputs, FUSION_BASE + ",fuse-glu")
    fused.save(tmp_path / "a")
    back = qcomp.load(tmp_path / "a")
    assert sum(bool(n.attrs.get("glu")) for n in back.graph.nodes) == 2
    with torch.no_grad():
        want = fused(*inputs)
        assert all(torch.equal(a, b) for a, b in zip(back(*inputs), want))
    torch.save({"inp": inputs, "want": want}, tmp_path / "io.pt")
    code = ("import sys, torch, qcomp; d = torch.load(sys.argv[2]); m = qcomp.load(sys.argv[1]); "
            "assert all(torch.equal(a, b) for a, b in zip(m(*d['inp']), d['want'])), 'differs'")
    env = {k: v for k, v in os.environ.items() if k != "QCOMP_FORCE_TRITON"}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), str(tmp_path / "io.pt")],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]


class _Leaky(nn.Module):
    """Two MLPs whose products must stay: one's silu also feeds the output; the other takes silu of the up half."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gate, self.up, self.down = (nn.Linear(128, 256, bias=False), nn.Linear(128, 256, bias=False),
                                         nn.Linear(256, 128, bias=False))
        self.gate2, self.up2, self.down2 = (nn.Linear(128, 256, bias=False), nn.Linear(128, 256, bias=False),
                                            nn.Linear(256, 128, bias=False))

    def forward(self, x):
        s = F.silu(self.gate(x))
        y = self.down(s * self.up(x)) + s.sum(-1, keepdim=True)
        x2 = x + 1  # another input: the second pair fuses on its own
        g2 = self.gate2(x2)
        return y + self.down2(F.silu(self.up2(x2)) * g2)


def test_products_it_must_leave_alone():
    model = _Leaky().to(torch.bfloat16)
    x = torch.randn(1, 3, 128).to(torch.bfloat16)
    compiled = compile_quietly(model, (x,), FUSION_BASE + ",fuse-glu")
    stats = pass_stats(compiled, "fuse-glu")
    assert stats["layers_fused"] == 0
    assert sorted(stats["left_alone"].values()) == [
        "gate and up are not the halves [0, 256) and [256, 512) of one value",
        "the silu or the product has other users",
    ]
    assert torch.equal(compiled(x), compile_quietly(model, (x,), FUSION_BASE)(x))


def test_verifier_checks_the_glu_width(tiny_decode):
    fused = compile_quietly(*tiny_decode, FUSION_BASE + ",fuse-glu")
    g = fused.graph.copy()
    plain_down = next(n for n in g.nodes if n.op == "qlinear" and n.attrs["layer"].endswith("o_proj"))
    plain_down.attrs["glu"] = True  # reads a k-wide x: not [gate | up]
    with pytest.raises(VerificationError, match="does not match in_features"):
        verify(g)
    plain_down.attrs["glu"] = "yes"
    with pytest.raises(VerificationError, match="glu attr must be a bool"):
        verify(g)
