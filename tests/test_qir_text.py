"""QIR text form: golden output, exact round trips (also on random graphs), parse errors with positions."""
import math

import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_golden
from qcomp.capture import capture_model
from qcomp.models.tiny import builtin_model
from qcomp.qir.types import parse_dim
from qcomp.qir import ANY, Graph, Node, QIRParseError, Ref, TensorType, parse_graph, print_graph


def test_tiny_mlp_golden():
    model, inputs = builtin_model("tiny-mlp")
    assert_golden(print_graph(capture_model(model, inputs)), "tiny_mlp_captured.qir")


def test_tiny_llama_round_trip():
    model, inputs = builtin_model("tiny-llama")
    text = print_graph(capture_model(model, inputs))
    assert print_graph(parse_graph(text)) == text


_names = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
_scalars = st.one_of(st.integers(-2**62, 2**62), _floats, st.booleans(), st.none(), st.text(max_size=8),
                     st.sampled_from([torch.float16, torch.bfloat16, torch.int64, torch.device("cpu"), torch.device("cuda:1"),
                                      torch.strided, torch.contiguous_format, Ellipsis]))


def _consts(depth=2):
    if depth == 0:
        return _scalars
    inner = _consts(depth - 1)
    return st.one_of(_scalars, st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
                     st.dictionaries(_names, inner, max_size=3),
                     st.tuples(inner, inner, inner).map(lambda t: slice(*t)))


_dims = st.one_of(st.integers(0, 4096), st.sampled_from(["s0", "s1", "2*s0", "s0 + 1", "Max(1, s1)", "FloorDiv(s0, 2)", "ModularIndexing(s0, 1, 4)"]).map(parse_dim))
_types = st.one_of(st.sampled_from([ANY]), st.builds(TensorType, st.sampled_from(["f32", "f16", "bf16", "i64", "u8", "bool"]),
                                                      st.lists(_dims, max_size=4).map(tuple)))


@st.composite
def graphs(draw):
    g = Graph(draw(st.text(max_size=10)), draw(st.dictionaries(_names, _consts(1), max_size=2)))
    names = []
    for i in range(draw(st.integers(1, 8))):
        name = draw(_names.filter(lambda n: n not in names))
        refs = st.sampled_from([Ref(n) for n in names]) if names else st.nothing()
        args = draw(st.lists(st.one_of(_consts(), refs), max_size=4))
        kwargs = draw(st.dictionaries(_names, st.one_of(_consts(1), refs), max_size=2))
        attrs = draw(st.dictionaries(_names, _consts(), max_size=3))
        g.add(Node(name, draw(st.sampled_from(["call", "linear", "rotate", "norm"])), tuple(args), kwargs, attrs, draw(_types)))
        names.append(name)
    return g


def _canon(v):  # NaN != NaN: compare through the text form of each constant
    return print_graph(v)


@settings(max_examples=150, deadline=None)
@given(graphs())
def test_random_graph_round_trip(g):
    text = print_graph(g)
    g2 = parse_graph(text)
    assert print_graph(g2) == text
    for a, b in zip(g.nodes, g2.nodes):
        assert (a.name, a.op, a.type) == (b.name, b.op, b.type)
        assert len(a.args) == len(b.args) and list(a.kwargs) == list(b.kwargs) and list(a.attrs) == list(b.attrs)


def test_float_values_survive_exactly():
    g = Graph("f")
    vals = [0.1, 1e-5, -0.0, 1 / 3, 2.0**-1074, math.inf, -math.inf]
    g.add(Node("x", "call", tuple(vals), attrs={"target": "aten.add.Tensor"}))
    back = parse_graph(print_graph(g)).node("x").args
    assert [repr(v) for v in back] == [repr(v) for v in vals]


@pytest.mark.parametrize("text, line, col, needle", [
    ("", 1, 1, "empty"),
    ("qir 2\ngraph \"g\" {}\n", 1, 5, "version"),
    ("qir 1\ngraph \"g\" {}\n%x = input() {index: 0} : f32[2, 3\n", 3, 35, "unterminated"),
    ("qir 1\ngraph \"g\" {}\n%x = input() {index: 0} : q8[2]\n", 3, 29, "unknown dtype"),
    ("qir 1\ngraph \"g\" {}\n%x = input(%) {} : any\n", 3, 13, "value name"),
    ("qir 1\ngraph \"g\" {}\n%x = input() {} : any\n%x = input() {} : any\n", 4, 2, "defined twice"),
    ("qir 1\ngraph \"g\" {}\n%x = call(1, a=2, 3) {} : any\n", 3, 19, "positional argument after keyword"),
])
def test_parse_errors_have_line_and_column(text, line, col, needle):
    with pytest.raises(QIRParseError) as e:
        parse_graph(text)
    assert (e.value.line, e.value.col) == (line, col), str(e.value)
    assert needle in str(e.value)
