"""canonicalize: remove what capture leaves behind and no pass wants to see.

Drops shape/metadata assertions, folds identities (alias, detach, eval-mode dropout, casts to the same
type), and removes dead nodes and unused parameters. In-place calls (targets ending in "_") are kept.
"""
from __future__ import annotations

from qcomp.pass_manager import PassContext, register_pass
from qcomp.qir import Graph, Ref
from qcomp.qir.graph import CALL_OPS

_ASSERTS = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default",
            "aten._assert_async.msg", "aten.sym_constrain_range.default"}
_IDENTITIES = {"aten.alias.default", "aten.detach.default", "aten.lift_fresh_copy.default"}
_CASTS = {"aten.to.dtype", "aten.to.dtype_layout", "aten._to_copy.default", "aten.to.device"}


def _is_identity(g: Graph, n) -> bool:
    t = n.attrs.get("target")
    if n.op not in CALL_OPS or not n.args or not isinstance(n.args[0], Ref):
        return False
    if t in _IDENTITIES:
        return True
    src = g.node(n.args[0]).type
    if t in _CASTS:
        return n.type == src and "device" not in n.kwargs and not any(isinstance(a, str) for a in n.args[1:])
    if t in ("aten.dropout.default", "torch.nn.functional.dropout"):
        train = n.args[2] if len(n.args) > 2 else n.kwargs.get("train", n.kwargs.get("training", t.startswith("aten")))
        return train is False
    return False


def _side_effect(n) -> bool:
    t = str(n.attrs.get("target") or "")
    base = t.split(".")[1] if t.startswith("aten.") else t.rsplit(".", 1)[-1]
    return n.op in ("input", "output") or (n.op in CALL_OPS and (base.endswith("_") and not base.startswith("_") or base == "copy_"))


@register_pass("canonicalize")
def canonicalize(graph: Graph, ctx: PassContext):
    """Drop assertions, fold identities, remove dead code and unused parameters."""
    g = graph.copy()
    asserts = identities = dead = 0
    for n in list(g.nodes):
        if n.op in CALL_OPS and n.attrs.get("target") in _ASSERTS:
            if not g.users()[n.name]:
                g.erase(n)
                asserts += 1
        elif _is_identity(g, n):
            g.replace_uses(n.name, n.args[0])
            g.erase(n)
            identities += 1
    uses = {n.name: 0 for n in g.nodes}
    for n in g.nodes:
        for r in {r.name for r in n.refs()}:
            uses[r] += 1
    for n in reversed(list(g.nodes)):
        if uses[n.name] == 0 and not _side_effect(n):
            for r in {r.name for r in n.refs()}:
                uses[r] -= 1
            g.erase(n)
            dead += 1
    return g, {"asserts_removed": asserts, "identities_folded": identities, "dead_removed": dead}
