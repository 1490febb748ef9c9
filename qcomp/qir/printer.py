"""The stable text form of QIR (machine-readable; `parser.parse_graph` reads it back).

    qir 1
    graph "tiny-mlp" {attrs}
    %x = input() {index: 0} : f32[s0, 64]
    %p_fc1_weight = param() {target: "fc1.weight"} : f32[128, 64]
    %fc1 = linear(%x, %p_fc1_weight, None) {layer: "fc1"} : f32[s0, 128]
    %out = output(%fc1) {} : any

Constants: ints, floats (Python repr, so they round-trip exactly; inf, -inf, nan), JSON strings,
True/False/None, [lists], (tuples,), {dicts}, dtype.f32, device("cuda:0"), layout.strided,
memory_format.contiguous_format, slice(a, b, c), ... (Ellipsis).
"""
from __future__ import annotations

import json
import math

import torch

from .graph import Graph, Node, Ref
from .types import DTYPE_NAMES

FORMAT_VERSION = 1
_ENUMS = {torch.layout: "layout", torch.memory_format: "memory_format"}


def format_value(v) -> str:
    if isinstance(v, Ref):
        return f"%{v.name}"
    if v is None or isinstance(v, bool):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if isinstance(v, tuple):
        inner = ", ".join(format_value(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)}: {format_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, torch.dtype):
        return f"dtype.{DTYPE_NAMES[v]}"
    if isinstance(v, torch.device):
        return f"device({json.dumps(str(v))})"
    for cls, prefix in _ENUMS.items():
        if isinstance(v, cls):
            return f"{prefix}.{str(v).removeprefix('torch.')}"
    if isinstance(v, slice):
        return f"slice({format_value(v.start)}, {format_value(v.stop)}, {format_value(v.step)})"
    if v is Ellipsis:
        return "..."
    raise TypeError(f"value {v!r} of type {type(v).__name__} has no QIR text form")


def _key(k: str) -> str:
    if not isinstance(k, str):
        raise TypeError(f"QIR dict keys must be strings, got {k!r}")
    return k if k.isidentifier() else json.dumps(k)


def format_node(n: Node) -> str:
    parts = [format_value(a) for a in n.args] + [f"{k}={format_value(v)}" for k, v in n.kwargs.items()]
    return f"%{n.name} = {n.op}({', '.join(parts)}) {format_value(n.attrs)} : {n.type}"


def print_graph(g: Graph) -> str:
    lines = [f"qir {FORMAT_VERSION}", f"graph {json.dumps(g.name)} {format_value(g.attrs)}"]
    lines += [format_node(n) for n in g.nodes]
    return "\n".join(lines) + "\n"
