"""fuse-norm: an RMSNorm read only by qlinears moves into their kernels.

    %n = norm(%h, %w, None) {kind: "rms", eps: E}
    %q = qlinear(%n, packed, scales, lut, offsets, bias)
  ->
    %q = qlinear(%h, packed, scales, lut, offsets, bias, %w, None) {norm: {eps: E}}

At batch 1 the norm is a kernel of its own before each attention and MLP block (one launch, one reduction and one
round trip of the hidden row); the gemv kernels (KernelSpec.x_norm) read weight * x (rounded to x's dtype) and scale
each output by the row's 1 / sqrt(mean(x^2) + eps) after their K loop, the sum of squares taken from the x they load
anyway (and summed over split-K as y is), so a layer loses one launch per norm and the kernel makes no pass over the
row before its loop. Their values differ from the unfused graph's at the rounding level: the reference rounds the
normalized x twice, the kernel rounds weight * x once at another scale. Every runtime honours `norm`: the reference
and the fallbacks apply rms_norm_reference first (the unfused function, bit for bit); above 4 rows ops.py does the
same before its tensor-core kernels.

Applies when the norm is an RMSNorm with a weight parameter of shape [k] in x's dtype (its output then has x's dtype,
as the kernel's does), and every user of the norm is a qlinear that reads it as its input, has no glu and no norm
yet. Run after lower (it names the kernels as lower does). Stats: norms fused, qlinears that took one, and the norms
left alone with the reason.
"""
from __future__ import annotations

from qcomp.pass_manager import PassContext, register_pass
from qcomp.qir import Graph, Node, Ref
from qcomp.qir.types import TensorType

from .lower import act_dtype, kernel_specs, why_not_qlinear_inputs


def _why_not(g: Graph, norm: Node, users: list[Node]) -> str | None:
    """None if every user of the RMSNorm `norm` can apply it in its kernel, else the reason."""
    if len(norm.args) < 2 or not isinstance(norm.args[0], Ref) or not isinstance(norm.args[1], Ref):
        return "no weight parameter"
    if len(norm.args) > 2 and norm.args[2] is not None or norm.kwargs:
        return "a bias or other arguments"
    w = g.node(norm.args[1])
    x = g.node(norm.args[0])
    if w.op != "param" or not isinstance(w.type, TensorType) or not isinstance(x.type, TensorType):
        return "the weight is not a parameter, or a type is unknown"
    if w.type.dtype != x.type.dtype or norm.type.dtype != x.type.dtype:
        return f"weight {w.type.dtype}, input {x.type.dtype}, output {norm.type.dtype}: not one dtype"
    if not users:
        return "no users"
    why = why_not_qlinear_inputs(norm, users)
    if why:
        return why
    for u in users:
        if u.attrs.get("glu") or u.attrs.get("norm"):
            return f"user %{u.name} already reads silu(gate) * up or a norm"
        if tuple(w.type.shape) != (u.attrs["k"],):
            return f"weight shape {tuple(w.type.shape)} is not user %{u.name}'s [k] = [{u.attrs['k']}]"
    return None


@register_pass("fuse-norm")
def fuse_norm(graph: Graph, ctx: PassContext):
    """qlinear(norm(h, w)) -> qlinear(h, ..., w, None) {norm: {eps}} (see the module docstring)."""
    g = graph.copy()
    fused, readers, apart = 0, 0, {}
    users = g.users()
    for norm in [n for n in g.nodes if n.op == "norm" and n.attrs.get("kind") == "rms"]:
        us = users.get(norm.name, [])
        why = _why_not(g, norm, us)
        if why:
            if any(u.op == "qlinear" for u in us):
                apart[norm.name] = why
            continue
        src, w = norm.args[0], norm.args[1]
        for u in us:
            res = u.args[7] if len(u.args) > 7 else None
            u.args = (src, *u.args[1:6], w, res)
            u.attrs["norm"] = {"eps": float(norm.attrs["eps"])}
            if "kernel" in u.attrs:
                u.attrs["kernel"] = {v: s.name() for v, s in kernel_specs(u.attrs, act_dtype(g, src)).items()}
            readers += 1
        g.erase(norm)
        users = g.users()
        fused += 1
    return g, {"norms_fused": fused, "qlinears": readers, "left_alone": apart}
