"""qcomp.compile end to end (capture -> canonicalize -> RTN quantize -> reference runtime) and bad input."""
import math
import warnings

import pytest
import torch

import qcomp
from qcomp.models.tiny import TinyMLP, builtin_model


@pytest.mark.parametrize("budget, bits", [(8.2, 8), (4.5, 4), (3.2, 3), (2.9, 2)])
def test_rtn_end_to_end(budget, bits):
    model, inputs = builtin_model("tiny-mlp")
    c = qcomp.compile(model, budget=budget, example_inputs=inputs, pipeline="canonicalize,quantize")
    rows = c.layer_table()
    assert all(r["bits_per_weight"] <= budget for r in rows)
    # the 256-wide layers take `bits` at group 128; fc1 (in_features 64) may need a bit less to fit the budget
    assert [r["spec"] for r in rows[1:]] == [f"uniform-w{bits}-g128"] * 2
    ref = model(*inputs)
    out = c(*inputs)
    rel = ((out - ref).norm() / ref.norm()).item()
    # error grows as bits shrink, and stays in the range RTN gives on these weights
    assert 0 < rel < {8: 0.02, 4: 0.15, 3: 0.45, 2: 0.8}[bits]
    # a new batch size runs too
    assert c(torch.randn(9, 64)).shape == (9, 32)


def test_compile_never_modifies_the_model():
    model, inputs = builtin_model("tiny-llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    qcomp.compile(model, budget=3.5, example_inputs=inputs)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype, k
    assert model.training


@pytest.mark.parametrize("budget", ["4", None, float("nan"), 0.5, 16.5, -3, True])
def test_budget_validation(budget):
    model, inputs = builtin_model("tiny-mlp")
    with pytest.raises(ValueError, match=r"budget must be"):
        qcomp.compile(model, budget=budget, example_inputs=inputs)


@pytest.mark.parametrize("pipeline, needle", [("canonicalize,quantize", r"at least 1.125"),
                                              (None, r"smallest feasible budget is \d")])
def test_budget_below_cheapest_option(pipeline, needle):
    model, inputs = builtin_model("tiny-mlp")
    with pytest.raises(Exception, match=needle):
        qcomp.compile(model, budget=1.0, example_inputs=inputs, pipeline=pipeline)


def test_nan_weights_named():
    model, inputs = builtin_model("tiny-mlp")
    with torch.no_grad():
        model.fc2.weight[3, 5] = math.nan
    with pytest.raises(ValueError, match=r"'fc2.weight'.*NaN/Inf"):
        qcomp.compile(model, budget=4, example_inputs=inputs)


def test_model_without_linear_layers_warns_and_runs():
    model = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.GELU())
    x = torch.randn(3, 8)
    with pytest.warns(qcomp.QcompWarning, match="no linear layers"):
        c = qcomp.compile(model, budget=4, example_inputs=(x,))
    assert torch.allclose(c(x), model(x))
    assert c.layer_table() == []


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        qcomp.compile(lambda x: x, budget=4)


def test_needs_example_inputs():
    with pytest.raises(qcomp.CaptureError, match="example_inputs"):
        qcomp.compile(TinyMLP(), budget=4)


def test_cli_main_job(capsys):
    from qcomp.cli import main

    assert main(["compile", "builtin:tiny-llama", "--budget", "3.5"]) == 0
    out = capsys.readouterr().out
    assert "layers.1.mlp.down_proj" in out and "allocate-bits" in out
    avg = float(out.split("average ")[1].split(" bits/weight")[0])
    assert 3.0 < avg <= 3.5


def test_budget_derived_bits_never_exceed_the_budget_with_fallback_groups():
    # in_features 96: group 32 would cost 4.5 > 4.2 bits, so per-channel; in_features 64: even per-channel
    # costs 4.25 at 4 bits, so that layer gets 3 bits
    model = torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    x = torch.randn(5, 96)
    c = qcomp.compile(model, budget=4.2, example_inputs=(x,), pipeline="canonicalize,quantize")
    rows = c.layer_table()
    assert all(r["bits_per_weight"] <= 4.2 for r in rows), rows
    assert [r["spec"] for r in rows] == ["uniform-w4-gch", "uniform-w3-g64"]
