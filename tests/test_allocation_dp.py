"""Property tests for the bit-allocation DP: exact against brute force, within budget, monotone, clear errors."""
import itertools
import math
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qcomp.allocation import BudgetError, LayerCandidates, Option, allocate, average_bits
from qcomp.numerics.quant_spec import QuantSpec

SPEC = QuantSpec(bits=4)  # the DP only reads bits and error; any valid spec will do


def layer(i, numel, alpha, bits, errors):
    opts = tuple(Option(spec=SPEC, rotate=False, bits=b, error=e) for b, e in zip(bits, errors))
    return LayerCandidates(f"l{i}", numel, alpha, opts)


def brute_force(layers, budget):
    """min Σ α t² over all assignments with exact average bits <= budget; None if none is feasible."""
    best = None
    for picks in itertools.product(*(range(len(l.options)) for l in layers)):
        if average_bits(layers, list(picks)) <= Fraction(budget):
            v = sum(l.alpha * l.options[j].error for l, j in zip(layers, picks))
            best = v if best is None else min(best, v)
    return best


def close(a, b):
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


errors = st.floats(0, 1, allow_nan=False)
alphas = st.floats(0, 100, allow_nan=False)


@st.composite
def grid_instances(draw):
    """Equal numel and bits = c·L·r, so every cost share f = c·r lies on the resolution grid r = 2^-6."""
    n_layers = draw(st.integers(1, 8))
    n_opts = draw(st.integers(1, 5))
    r = 2.0**-6
    layers, costs = [], []
    for i in range(n_layers):
        cs = draw(st.lists(st.integers(1, 16 * 64), min_size=n_opts, max_size=n_opts))
        errs = draw(st.lists(errors, min_size=n_opts, max_size=n_opts))
        layers.append(layer(i, 1000, draw(alphas), [c * n_layers * r for c in cs], errs))
        costs.append(cs)
    return layers, costs, r


@st.composite
def free_instances(draw, max_layers=5, max_opts=4):
    """Arbitrary numel, bits and a coarse resolution, so that rounding matters."""
    n_layers = draw(st.integers(1, max_layers))
    layers = []
    for i in range(n_layers):
        k = draw(st.integers(1, max_opts))
        bits = draw(st.lists(st.floats(1.0, 16.0, allow_nan=False), min_size=k, max_size=k))
        errs = draw(st.lists(errors, min_size=k, max_size=k))
        layers.append(layer(i, draw(st.integers(1, 10**7)), draw(alphas), bits, errs))
    r = draw(st.sampled_from([0.3, 0.1, 2.0**-5, 0.013, 1e-3]))
    return layers, r


def min_budget(layers):
    """The smallest float budget >= the exact cost of the cheapest assignment."""
    exact = average_bits(layers, [min(range(len(l.options)), key=lambda j: l.options[j].bits) for l in layers])
    x = float(exact)
    return x if Fraction(x) >= exact else math.nextafter(x, math.inf)


def max_budget(layers):
    return float(average_bits(layers, [max(range(len(l.options)), key=lambda j: l.options[j].bits) for l in layers]))


def budget_between(layers, u, extra=0.5):
    """A budget from the cheapest assignment (u = 0) to a bit above the dearest (u = 1)."""
    lo = min_budget(layers)
    return lo + u * (max_budget(layers) + extra - lo)


def brute_force_grid(costs, values, budget, r):
    """Vectorized brute force for integer costs c (cost share c·r, exact in floats): min Σ v with Σ c·r <= budget."""
    total, value = np.zeros(()), np.zeros(())
    for c, v in zip(costs, values):
        total = np.add.outer(total, np.asarray(c, dtype=np.float64))
        value = np.add.outer(value, np.asarray(v, dtype=np.float64))
    ok = total * r <= budget
    return float(value[ok].min())


@settings(max_examples=60, deadline=None)
@given(grid_instances(), st.floats(0, 1))
def test_dp_equals_brute_force_on_grid_costs(inst, u):
    layers, costs, r = inst
    budget = budget_between(layers, u)
    a = allocate(layers, budget, resolution=r)
    values = [[l.alpha * o.error for o in l.options] for l in layers]
    assert close(a.objective, brute_force_grid(costs, values, budget, r))
    if len(layers) <= 4:  # the slow exact-rational brute force agrees too
        assert close(a.objective, brute_force(layers, budget))


@settings(max_examples=100, deadline=None)
@given(free_instances(max_layers=8, max_opts=5), st.floats(0, 1))
def test_result_always_within_budget(inst, u):
    layers, r = inst
    budget = budget_between(layers, u)
    a = allocate(layers, budget, resolution=r)
    picks = [l.options.index(c.option) for l, c in zip(layers, a.choices)]
    assert average_bits(layers, picks) <= Fraction(budget)
    assert a.avg_bits <= budget
    assert close(a.objective, sum(l.alpha * c.option.error for l, c in zip(layers, a.choices)))


@settings(max_examples=60, deadline=None)
@given(free_instances(), st.floats(0, 1))
def test_rounding_loss_within_stated_bound(inst, u):
    """OPT(B) <= DP(B) <= OPT(B - L·r), the bound stated in the dp docstring."""
    layers, r = inst
    budget = budget_between(layers, u)
    a = allocate(layers, budget, resolution=r)
    assert brute_force(layers, budget) <= a.objective + 1e-9 * max(1.0, a.objective)
    weaker = brute_force(layers, budget - len(layers) * r)
    if weaker is not None:
        assert a.objective <= weaker + 1e-9 * max(1.0, weaker)


@settings(max_examples=60, deadline=None)
@given(free_instances(max_layers=8, max_opts=5), st.floats(0, 1), st.floats(0, 1))
def test_larger_budget_never_worse(inst, u, v):
    layers, r = inst
    b1, b2 = sorted([budget_between(layers, u), budget_between(layers, v)])
    assert allocate(layers, b2, resolution=r).objective <= allocate(layers, b1, resolution=r).objective + 1e-12


@settings(max_examples=40, deadline=None)
@given(free_instances(max_layers=8, max_opts=5))
def test_infeasible_budget_names_the_minimum(inst):
    layers, r = inst
    with pytest.raises(BudgetError) as e:
        allocate(layers, min_budget(layers) * (1 - 1e-6) - 1e-9, resolution=r)
    assert isinstance(e.value, ValueError)
    assert f"{e.value.min_budget:.6f}" in str(e.value)
    # the named budget is feasible, and it is exactly the cheapest assignment
    a = allocate(layers, e.value.min_budget, resolution=r)
    assert a.avg_bits <= e.value.min_budget
    assert e.value.min_budget == pytest.approx(min_budget(layers), rel=1e-12)


def test_keep_option_taken_when_budget_allows():
    keep = Option(spec=None, rotate=False, bits=16.0, error=0.0)
    q = Option(spec=SPEC, rotate=False, bits=4.125, error=0.01)
    layers = [LayerCandidates("a", 100, 1.0, (q, keep)), LayerCandidates("b", 300, 5.0, (q, keep))]
    assert [c.option for c in allocate(layers, 16.0).choices] == [keep, keep]
    # 7.1 bits on average: only layer a (25 % of the weights, 7.09 bits) can be kept, b (10.0 bits) cannot
    a = allocate(layers, 7.1)
    assert [c.option for c in a.choices] == [keep, q]
    assert a.avg_bits == pytest.approx((100 * 16 + 300 * 4.125) / 400)
    assert a.objective == pytest.approx(5.0 * 0.01)


def test_bad_inputs_are_rejected():
    q = Option(spec=SPEC, rotate=False, bits=4.0, error=0.1)
    with pytest.raises(ValueError, match="alpha"):
        LayerCandidates("a", 10, -1.0, (q,))
    with pytest.raises(ValueError, match="no options"):
        LayerCandidates("a", 10, 1.0, ())
    with pytest.raises(ValueError, match="unique"):
        allocate([LayerCandidates("a", 10, 1.0, (q,))] * 2, 8.0)
    with pytest.raises(ValueError, match="error"):
        Option(spec=SPEC, rotate=False, bits=4.0, error=-0.1)


def test_realistic_size_is_fast():
    """210 layers x 40 options at the default resolution (0.005/210 bit) in well under a few seconds."""
    rng = np.random.default_rng(0)
    layers = []
    for i in range(210):
        n, k = [(576, 576), (192, 576), (1536, 576), (576, 1536)][i % 4]
        bits = np.sort(rng.uniform(2.0, 8.5, 39))
        errs = np.sort(rng.uniform(1e-4, 0.4, 39))[::-1] * 4.0 ** -(bits - bits[0])
        opts = [Option(spec=SPEC, rotate=False, bits=float(b), error=float(e)) for b, e in zip(bits, errs)]
        opts.append(Option(spec=None, rotate=False, bits=16.0, error=0.0))
        layers.append(LayerCandidates(f"l{i}", n * k, float(rng.lognormal()), tuple(opts)))
    t = time.perf_counter()
    a = allocate(layers, 3.5)
    assert time.perf_counter() - t < 5.0
    assert a.avg_bits <= 3.5
