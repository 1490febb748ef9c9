"""fuse-residual: the residual add after a qlinear moves into the qlinear's kernel epilogue.

    %y = qlinear(%x, packed, scales, lut, offsets, bias)
    %h = elementwise(%r, %y) {target: "operator.add"}          (or (%y, %r))
  ->
    %y = qlinear(%x, packed, scales, lut, offsets, bias, None, %r)   (the users of %h read %y)

The layer's output rounded to its dtype plus the residual, rounded once: torch's add of two tensors of one dtype, so
the function is unchanged bit for bit in the reference, and the kernels add it where they store y (the HAS_RES
constexpr of every variant). At batch 1 this leaves the next norm's kernel with nothing else to do, so that
fuse-norm can take it too: together they remove the glue launches between two GEMVs.

Applies when the add has exactly two tensor arguments and no others (no alpha), the qlinear's output feeds only this
add, the residual has the output's static shape and dtype (no broadcast, no promotion), and is computed before the
qlinear (the kernel reads it). Stats: adds fused and the adds after a qlinear left alone with the reason.
"""
from __future__ import annotations

from qcomp.pass_manager import PassContext, register_pass
from qcomp.qir import Graph, Node, Ref
from qcomp.qir.types import TensorType

_ADD = ("operator.add", "torch.add", "aten.add.Tensor")


def _why_not(g: Graph, add: Node, q: Node, r: Ref, users: dict, order: dict) -> str | None:
    if any(u is not add for u in users[q.name]):
        return f"%{q.name} has other users"
    if len(q.args) > 7 and q.args[7] is not None:
        return f"%{q.name} already adds a residual"
    rn = g.node(r)
    if not all(isinstance(t, TensorType) for t in (rn.type, q.type, add.type)):
        return "a type is unknown"
    if tuple(rn.type.shape) != tuple(q.type.shape) or tuple(add.type.shape) != tuple(q.type.shape):
        return f"shapes {tuple(rn.type.shape)} + {tuple(q.type.shape)}: a broadcast"
    if not (rn.type.dtype == q.type.dtype == add.type.dtype):
        return f"dtypes {rn.type.dtype} + {q.type.dtype} -> {add.type.dtype}: not one dtype"
    if order[rn.name] > order[q.name]:
        return f"the residual %{rn.name} is computed after %{q.name}"
    return None


@register_pass("fuse-residual")
def fuse_residual(graph: Graph, ctx: PassContext):
    """r + qlinear(x) -> qlinear(x, ..., None, r) (see the module docstring)."""
    g = graph.copy()
    fused, apart = 0, {}
    users = g.users()
    order = {n.name: i for i, n in enumerate(g.nodes)}  # erasing an add keeps the others' order
    for add in [n for n in g.nodes if n.op == "elementwise" and n.target in _ADD]:
        if len(add.args) != 2 or add.kwargs or not all(isinstance(a, Ref) for a in add.args):
            continue
        if add.args[0] == add.args[1]:
            continue
        pick = [(g.node(a), b) for a, b in (add.args, add.args[::-1]) if g.node(a).op == "qlinear"]
        if not pick:
            continue
        why = None
        for q, r in pick:
            why = _why_not(g, add, q, r, users, order)
            if why is None:
                break
        if why:
            apart[add.name] = why
            continue
        norm_w = q.args[6] if len(q.args) > 6 else None
        q.args = (*q.args[:6], norm_w, r)
        g.replace_uses(add.name, Ref(q.name))
        g.erase(add)
        users = g.users()
        fused += 1
    return g, {"adds_fused": fused, "left_alone": apart}
