"""The QIR graph: an ordered list of SSA nodes plus the named parameter tensors they read.

A Node is `%name = op(args..., key=value...) {attr: value, ...} : type`. Arguments are Refs to earlier
nodes or constants (numbers, strings, bools, None, lists, tuples, dicts, torch dtypes/devices/...,
slices). Attributes are constants only. Parameter tensors live in `Graph.params`, keyed by the qualified
name that `param` nodes carry in `attrs["target"]`; the text form holds no tensor data.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch

from .types import ANY, QType, TensorType

# op -> category, for readers; execution of the call-like ops is driven by attrs["target"].
STRUCTURAL_OPS = ("input", "param", "output")
QUANT_OPS = ("linear", "qlinear", "rotate", "norm", "embedding")
CALL_OPS = ("call", "call_method", "elementwise", "matmul", "attention", "reshape", "transpose")
ALL_OPS = STRUCTURAL_OPS + QUANT_OPS + CALL_OPS


@dataclass(frozen=True)
class Ref:
    """A use of the value defined by node `name`."""

    name: str

    def __repr__(self) -> str:
        return f"%{self.name}"


@dataclass
class Node:
    name: str
    op: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    type: QType = ANY

    def refs(self) -> list[Ref]:
        out: list[Ref] = []
        _collect_refs(self.args, out)
        _collect_refs(self.kwargs, out)
        return out

    def map_refs(self, fn) -> None:
        self.args = _map_refs(self.args, fn)
        self.kwargs = _map_refs(self.kwargs, fn)

    @property
    def target(self) -> str | None:
        return self.attrs.get("target")

    @property
    def tensor_type(self) -> TensorType:
        if not isinstance(self.type, TensorType):
            raise TypeError(f"node %{self.name} ({self.op}) has type {self.type}, not a tensor type")
        return self.type


def _collect_refs(v, out: list) -> None:
    if isinstance(v, Ref):
        out.append(v)
    elif isinstance(v, (list, tuple)):
        for x in v:
            _collect_refs(x, out)
    elif isinstance(v, dict):
        for x in v.values():
            _collect_refs(x, out)
    elif isinstance(v, slice):
        for x in (v.start, v.stop, v.step):
            _collect_refs(x, out)


def _map_refs(v, fn):
    if isinstance(v, Ref):
        return fn(v)
    if isinstance(v, list):
        return [_map_refs(x, fn) for x in v]
    if isinstance(v, tuple):
        return tuple(_map_refs(x, fn) for x in v)
    if isinstance(v, dict):
        return {k: _map_refs(x, fn) for k, x in v.items()}
    if isinstance(v, slice):
        return slice(_map_refs(v.start, fn), _map_refs(v.stop, fn), _map_refs(v.step, fn))
    return v


class Graph:
    def __init__(self, name: str = "model", attrs: dict | None = None):
        self.name = name
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.nodes: list[Node] = []
        self.params: dict[str, torch.Tensor] = {}
        self._by_name: dict[str, Node] = {}

    # -- access ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def node(self, name: str | Ref) -> Node:
        key = name.name if isinstance(name, Ref) else name
        try:
            return self._by_name[key]
        except KeyError:
            raise KeyError(f"no node %{key} in graph {self.name!r}") from None

    def find(self, op: str) -> list[Node]:
        return [n for n in self.nodes if n.op == op]

    @property
    def inputs(self) -> list[Node]:
        return sorted(self.find("input"), key=lambda n: n.attrs["index"])

    @property
    def output(self) -> Node:
        outs = self.find("output")
        if len(outs) != 1:
            raise ValueError(f"graph {self.name!r} has {len(outs)} output nodes, expected 1")
        return outs[0]

    def users(self) -> dict[str, list[Node]]:
        """name -> nodes that use it (recomputed on each call; graphs are small)."""
        out: dict[str, list[Node]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for r in n.refs():
                if r.name in out and n not in out[r.name]:
                    out[r.name].append(n)
        return out

    def param(self, ref: Ref | str) -> torch.Tensor:
        node = self.node(ref)
        if node.op != "param":
            raise ValueError(f"%{node.name} is a {node.op}, not a param")
        return self.params[node.attrs["target"]]

    # -- edits ----------------------------------------------------------------------------
    def fresh_name(self, base: str) -> str:
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in base) or "v"
        if base[0].isdigit():
            base = "v" + base
        name, i = base, 1
        while name in self._by_name:
            name = f"{base}_{i}"
            i += 1
        return name

    def _index(self, node: Node) -> int:
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise ValueError(f"node %{node.name} is not in graph {self.name!r}")

    def add(self, node: Node, before: Node | None = None, after: Node | None = None) -> Node:
        if node.name in self._by_name:
            raise ValueError(f"duplicate node name %{node.name}")
        if before is not None:
            self.nodes.insert(self._index(before), node)
        elif after is not None:
            self.nodes.insert(self._index(after) + 1, node)
        else:
            self.nodes.append(node)
        self._by_name[node.name] = node
        return node

    def add_param(self, target: str, tensor: torch.Tensor, before: Node | None = None, name: str | None = None) -> Node:
        """Register a parameter tensor and a `param` node for it (before `before`, default: after the leading inputs and params)."""
        if target in self.params:
            raise ValueError(f"parameter {target!r} already exists")
        self.params[target] = tensor
        node = Node(self.fresh_name(name or "p_" + target), "param", attrs={"target": target}, type=TensorType.of(tensor))
        if before is None:
            firsts = [n for n in self.nodes if n.op not in ("input", "param")]
            before = firsts[0] if firsts else None
        return self.add(node, before=before)

    def replace_uses(self, old: str, new: Ref) -> None:
        for n in self.nodes:
            n.map_refs(lambda r: new if r.name == old else r)

    def erase(self, node: Node) -> None:
        users = [u.name for u in self.nodes if any(r.name == node.name for r in u.refs())]
        if users:
            raise ValueError(f"cannot erase %{node.name}: still used by {', '.join('%' + u for u in users)}")
        del self.nodes[self._index(node)]
        del self._by_name[node.name]
        if node.op == "param" and not any(
            n.op == "param" and n.attrs.get("target") == node.attrs["target"] for n in self.nodes
        ):
            self.params.pop(node.attrs["target"], None)

    def rename(self, node: Node, new: str) -> None:
        old = node.name
        if new == old:
            return
        if new in self._by_name:
            raise ValueError(f"duplicate node name %{new}")
        self.replace_uses(old, Ref(new))
        del self._by_name[old]
        node.name = new
        self._by_name[new] = node

    def copy(self) -> "Graph":
        """Deep copy of the structure; parameter tensors are shared (passes replace, never mutate, them)."""
        g = Graph(self.name, copy.deepcopy(self.attrs))
        for n in self.nodes:
            g.add(Node(n.name, n.op, copy.deepcopy(n.args), copy.deepcopy(n.kwargs), copy.deepcopy(n.attrs), n.type))
        g.params = dict(self.params)
        return g

    def structurally_equal(self, other: "Graph") -> bool:
        from .printer import print_graph

        return print_graph(self) == print_graph(other)

    def linear_layers(self) -> Iterable[Node]:
        return [n for n in self.nodes if n.op in ("linear", "qlinear")]

    def __str__(self) -> str:
        from .printer import print_graph

        return print_graph(self)
