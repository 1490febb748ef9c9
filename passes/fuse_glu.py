"""fuse-glu: the MLP's silu(gate) * up moves into the down projection's kernel, which reads the gate_up output.

    %gate = call(%gate_up, -1, 0, I) {target: "torch.narrow"}          (fuse-siblings' slices of one qlinear)
    %up   = call(%gate_up, -1, I, I) {target: "torch.narrow"}
    %s    = elementwise(%gate) {target: "torch.nn.functional.silu"}
    %h    = elementwise(%s, %up) {target: "operator.mul"}
    %down = qlinear(%h, ...) {k: I}
  ->
    %down = qlinear(%gate_up, ...) {k: I, glu: True}

At batch 1 the activation is a kernel of its own between two GEMVs (one launch and one round trip of 2I values per
layer); the gemv kernels can apply it while they load x (KernelSpec.x_glu: silu in fp32 rounded to x's dtype, then
the product rounded, as torch computes the two ops), so the step loses one launch per layer. Every runtime honours
`glu` (the reference computes silu(gate) * up first: the function is unchanged, bit for bit there).

Applies when the down projection is a qlinear reading the product directly (its rotation, if any, already fused by
`lower`), the product's two factors are silu of the first half and the second half of one value (in either order)
whose last dim is 2k, and the product and the silu feed nothing else. Run after fuse-siblings and lower (it names
the glu kernels as lower does). Stats: layers fused, and the silu products left alone with the reason.
"""
from __future__ import annotations

from qcomp.pass_manager import PassContext, register_pass
from qcomp.qir import Graph, Node, Ref
from qcomp.qir.types import TensorType

from .lower import act_dtype, kernel_specs

_MUL = ("operator.mul", "torch.mul", "aten.mul.Tensor")
_SILU = ("torch.nn.functional.silu", "aten.silu.default", "torch.silu")


def _narrow(g: Graph, ref) -> tuple | None:
    """(source ref, start, length) of a last-dim torch.narrow node behind `ref`, else None."""
    if not isinstance(ref, Ref):
        return None
    n = g.node(ref)
    if n.op != "call" or n.target != "torch.narrow" or len(n.args) != 4 or n.kwargs:
        return None
    src, dim, start, length = n.args
    if not isinstance(src, Ref) or dim != -1 or not isinstance(start, int) or not isinstance(length, int):
        return None
    return src, start, length


def _why_not(g: Graph, down: Node, mul: Node, users: dict) -> tuple[str | None, tuple[Node, Ref] | None]:
    """(None, (the silu node, the [gate | up] value)) if `down`, reading the product `mul`, can read silu(gate) * up
    in its kernel, else (reason, None)."""
    if len(mul.args) != 2 or mul.kwargs:
        return "the product takes other arguments", None
    for silu_ref, up_ref in (mul.args, mul.args[::-1]):
        silu = g.node(silu_ref) if isinstance(silu_ref, Ref) else None
        if silu is None or silu.op != "elementwise" or silu.target not in _SILU:
            continue
        if len(silu.args) != 1 or silu.kwargs.get("inplace", False) or set(silu.kwargs) - {"inplace"}:
            return "silu is in place or takes other arguments", None
        gate, up = _narrow(g, silu.args[0]), _narrow(g, up_ref)
        if gate is None or up is None:
            return "gate and up are not slices of one value", None
        k = down.attrs["k"]
        src = g.node(gate[0])
        if gate[0] != up[0] or gate[1:] != (0, k) or up[1:] != (k, k):
            return f"gate and up are not the halves [0, {k}) and [{k}, {2 * k}) of one value", None
        if not isinstance(src.type, TensorType) or src.type.shape[-1] != 2 * k or src.type.dtype != mul.type.dtype:
            return f"%{src.name} is not a {2 * k}-wide value of the product's dtype", None
        if any(u is not mul for u in users[silu.name]) or any(u is not down for u in users[mul.name]):
            return "the silu or the product has other users", None
        return None, (silu, gate[0])
    return "no factor is a silu", None


@register_pass("fuse-glu")
def fuse_glu(graph: Graph, ctx: PassContext):
    """qlinear(silu(gate) * up) of one value's halves -> qlinear(value) {glu: True} (see the module docstring)."""
    g = graph.copy()
    fused, apart = 0, {}
    users = g.users()
    for down in [n for n in g.nodes if n.op == "qlinear" and not n.attrs.get("glu")]:
        mul = g.node(down.args[0])
        if mul.op != "elementwise" or mul.target not in _MUL:
            continue
        why, parts = _why_not(g, down, mul, users)
        if why:
            apart[down.name] = why
            continue
        silu, src = parts
        down.args = (src,) + tuple(down.args[1:])
        down.attrs["glu"] = True
        if "kernel" in down.attrs:
            down.attrs["kernel"] = {v: s.name() for v, s in kernel_specs(down.attrs, act_dtype(g, src)).items()}
        g.erase(mul)
        g.erase(silu)
        users = g.users()
        for ref in {r.name for r in (silu.args[0], *mul.args) if isinstance(r, Ref) and r.name in g}:
            if g.node(ref).op == "call" and not users.get(ref):
                g.erase(g.node(ref))  # the narrow slices nothing else reads
        users = g.users()
        fused += 1
    return g, {"layers_fused": fused, "left_alone": apart}
