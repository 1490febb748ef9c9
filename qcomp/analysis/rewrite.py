"""Graph edits shared by the rotation passes: rotating parameter tensors and adding rotate nodes.

Tensors are never modified in place (graphs share them after `Graph.copy()`): a rewrite computes a new
tensor (in float64, cast back to the parameter's dtype) and either replaces the entry in `g.params`
(when the node is the parameter's only reader) or gives the node its own new parameter. Tied weights
(an embedding table that is also the lm_head weight) therefore stay tied exactly when both readers ask
for the same transform, and otherwise are split, never silently changed for the other reader.
"""
from __future__ import annotations

from typing import Callable, Hashable

import torch

from qcomp.qir import Graph, Node, Ref, TensorType


def rotate_last(t: torch.Tensor, size: int, seed, inverse: bool = False) -> torch.Tensor:
    """t @ Q (or t @ Qᵀ) along the last dim, computed in float64, returned in t's dtype."""
    from qcomp.numerics.hadamard import hadamard_transform

    return hadamard_transform(t.to(torch.float64), size, seed=seed, inverse=inverse).to(t.dtype)


def rotate_first(t: torch.Tensor, size: int, seed, inverse: bool = False) -> torch.Tensor:
    """Qᵀ @ t (or Q @ t) along the first dim: the output side of a weight [N, K] whose output is rotated."""
    return rotate_last(t.transpose(0, -1), size, seed, inverse).transpose(0, -1).contiguous()


class ParamRewriter:
    """Replace the tensor that `node.args[index]` reads by `fn(tensor)`; `key` names the transform.

    Keeps an index of which nodes read which param node, built once: the passes using it change param
    uses only through `apply` and `clear`.
    """

    def __init__(self, g: Graph):
        self.g = g
        self._memo: dict[tuple, tuple[str, torch.Tensor]] = {}
        self._uses: dict[str, list[str]] = {n.name: [] for n in g.nodes if n.op == "param"}
        for n in g.nodes:
            for r in n.refs():
                if r.name in self._uses and n.name not in self._uses[r.name]:
                    self._uses[r.name].append(n.name)

    def _readers(self, target: str) -> set[str]:
        return {u for p, us in self._uses.items() if self.g.node(p).attrs.get("target") == target for u in us}

    def apply(self, node: Node, index: int, key: Hashable, fn: Callable[[torch.Tensor], torch.Tensor], tag: str) -> None:
        g = self.g
        ref = node.args[index]
        pnode = g.node(ref)
        if pnode.op != "param":
            raise ValueError(f"%{node.name} argument {index} is %{pnode.name} ({pnode.op}), not a param")
        target = pnode.attrs["target"]
        hit = self._memo.get((target, key))
        if hit is not None and hit[0] in g and g.params.get(g.node(hit[0]).attrs["target"]) is hit[1]:
            self._set_arg(node, index, hit[0])
            return
        new = fn(g.params[target]).contiguous()
        if new.shape != g.params[target].shape or new.dtype != g.params[target].dtype:
            raise ValueError(f"rewriting {target!r} changed its type to {TensorType.of(new)}")
        if self._readers(target) == {node.name} and sum(r == ref for r in node.refs()) == 1:
            g.params[target] = new
            return
        new_target, i = f"{target}.{tag}", 1
        while new_target in g.params:
            new_target, i = f"{target}.{tag}{i}", i + 1
        pnew = g.add_param(new_target, new, name="p_" + new_target)
        self._uses[pnew.name] = []
        self._memo[(target, key)] = (pnew.name, new)
        self._set_arg(node, index, pnew.name)

    def clear(self, node: Node, index: int) -> None:
        """Set `node.args[index]` (a param) to None, erasing the param node if nothing else reads it."""
        self._set_arg(node, index, None)

    def _set_arg(self, node: Node, index: int, name: str | None) -> None:
        old = node.args[index].name
        args = list(node.args)
        args[index] = Ref(name) if name is not None else None
        node.args = tuple(args)
        if Ref(old) not in node.refs():
            self._uses[old].remove(node.name)
        if name is not None and node.name not in self._uses[name]:
            self._uses[name].append(node.name)
        if not self._uses[old]:
            self.g.erase(self.g.node(old))
            del self._uses[old]


def add_rotate(g: Graph, x: str, size: int, seed, inverse: bool, before: Node, name: str | None = None) -> Node:
    """A `rotate` node computing x @ Q (inverse: x @ Qᵀ), placed before `before`."""
    node = Node(g.fresh_name(name or f"{x}_{'unrot' if inverse else 'rot'}"), "rotate", (Ref(x),), {},
                {"size": int(size), "seed": seed, "inverse": bool(inverse)}, g.node(x).type)
    return g.add(node, before=before)


def count_online(g: Graph) -> int:
    return sum(1 for n in g.nodes if n.op == "rotate")
