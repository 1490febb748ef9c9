"""Tests for the allocate-bits pass: within budget, quant attrs for the quantize pass, report files, errors."""
import json

import pytest
import torch

import qcomp
from qcomp.allocation import BudgetError
from qcomp.models.tiny import builtin_model
from qcomp.pass_manager import PassError
from qcomp.qir import parse_graph, print_graph

PIPE = "canonicalize,allocate-bits,quantize"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return builtin_model("tiny-llama")


def kl_to_float(model, compiled):
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        lp = torch.log_softmax(model(ids), -1)
    lq = torch.log_softmax(compiled(ids), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


@pytest.mark.parametrize("budget", [2.5, 3.5, 4.5])
def test_within_budget_and_quantized_as_allocated(tiny, tmp_path, budget):
    m, x = tiny
    cm = qcomp.compile(m, budget=budget, example_inputs=x, pipeline=PIPE, dump_dir=tmp_path, cache_dir=tmp_path / "c")
    rep = cm.report["allocation"]
    assert rep["avg_bits"] <= budget and rep["skipped"] == ["lm_head"]
    rows = {r["name"]: r for r in rep["layers"]}
    assert len(rows) == 14
    # the quantize pass followed the allocation: same bits per layer, and the average counts kept layers at 16
    done = {r["layer"]: r for r in cm.report["layers"]}
    for name, r in rows.items():
        if r["grid"] == "keep":
            assert name not in done
        else:
            assert done[name]["bits_per_weight"] == pytest.approx(r["bits"])
    total = sum(r["numel"] for r in rows.values())
    assert sum(r["numel"] * r["bits"] for r in rows.values()) / total <= budget
    on_disk = json.loads((tmp_path / "allocation.json").read_text())
    assert on_disk["layers"] == rep["layers"] and (tmp_path / "allocation.png").stat().st_size > 1000


def test_quant_attrs_survive_the_text_form(tiny, tmp_path):
    m, x = tiny
    qcomp.compile(m, budget=3.0, example_inputs=x, pipeline="canonicalize,allocate-bits", dump_dir=tmp_path,
                  cache_dir=tmp_path / "c")
    text = (tmp_path / "02_allocate-bits.qir").read_text()
    g = parse_graph(text)
    assert print_graph(g) == text
    quant = [n.attrs["quant"] for n in g.nodes if n.op == "linear" and "quant" in n.attrs]
    assert len(quant) == 14 and all("spec" in q or q.get("keep") for q in quant)


def test_dp_beats_uniform_at_the_same_bits(tiny, tmp_path):
    """Uniform 4-bit g64 costs 4.25 bits/weight; the DP at 4.25 gives a smaller KL to the float model."""
    m, x = tiny
    dp = qcomp.compile(m, budget=4.25, example_inputs=x, pipeline=PIPE, cache_dir=tmp_path)
    uni = qcomp.compile(m, budget=4.25, example_inputs=x, pipeline="canonicalize,quantize(bits=4, group_size=64)")
    assert dp.report["allocation"]["avg_bits"] <= 4.25
    assert kl_to_float(m, dp) < kl_to_float(m, uni)


def test_budget_below_cheapest_names_the_minimum(tiny, tmp_path):
    m, x = tiny
    with pytest.raises(PassError) as e:
        qcomp.compile(m, budget=2.0, example_inputs=x, pipeline=PIPE, cache_dir=tmp_path)
    cause = e.value.cause
    assert isinstance(cause, BudgetError)
    # cheapest: 2 bits + 16/g for the scales, g the largest of 64/128/256 dividing in_features
    shapes = [w.shape for n, w in m.named_parameters() if n.endswith("proj.weight")]
    numel = sum(a * b for a, b in shapes)
    cheapest = sum(a * b * (2 + 16 / max(g for g in (64, 128, 256) if b % g == 0)) for a, b in shapes) / numel
    assert cause.min_budget == pytest.approx(cheapest, rel=1e-12)
    assert f"{cause.min_budget:.6f}" in str(cause)
    assert "sensitivity" not in "".join(p.name for p in tmp_path.iterdir())  # refused before measuring


def test_sensitivity_file_replaces_the_measurement(tiny, tmp_path, monkeypatch):
    """α measured once (say on a GPU) and reused from its JSON elsewhere: same allocation, no noise forwards."""
    m, x = tiny
    first = qcomp.compile(m, budget=3.5, example_inputs=x, pipeline=PIPE, cache_dir=tmp_path / "c")
    (f,) = (tmp_path / "c").glob("sensitivity-*.json")

    def no_measuring(*a, **k):
        raise AssertionError("sensitivity was measured although a file was given")

    monkeypatch.setattr("qcomp.passes.allocate_bits.measure_sensitivity", no_measuring)
    pipe = PIPE.replace("allocate-bits", f'allocate-bits(sensitivity_file="{f}")')
    again = qcomp.compile(m, budget=3.5, example_inputs=x, pipeline=pipe, cache_dir=False)
    a, b = first.report["allocation"], again.report["allocation"]
    assert [r["option"] for r in a["layers"]] == [r["option"] for r in b["layers"]]
    assert b["sensitivity"]["cost"]["file"] == str(f)

    bad = json.loads(f.read_text())
    del bad["alphas"][next(iter(bad["alphas"]))]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(PassError, match="has no α for 1 of the 14 layers.*measured on another graph"):
        qcomp.compile(m, budget=3.5, example_inputs=x, cache_dir=False,
                      pipeline=PIPE.replace("allocate-bits", f'allocate-bits(sensitivity_file="{tmp_path / "bad.json"}")'))
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(PassError, match="not a qcomp sensitivity JSON"):
        qcomp.compile(m, budget=3.5, example_inputs=x, cache_dir=False,
                      pipeline=PIPE.replace("allocate-bits", f'allocate-bits(sensitivity_file="{tmp_path / "junk.json"}")'))
