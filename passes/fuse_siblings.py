"""fuse-siblings: qlinears that read the same value with the same quantization become one wider qlinear.

    %q = qlinear(%h, q.qweight, ...) {n: 4096}            %qkv = qlinear(%h, qkv.qweight, ...) {n: 6144}
    %k = qlinear(%h, k.qweight, ...) {n: 1024}     ->     %q = call(%qkv, -1, 0, 4096) {target: "torch.narrow"}
    %v = qlinear(%h, v.qweight, ...) {n: 1024}            %k = call(%qkv, -1, 4096, 1024) {target: "torch.narrow"}
                                                          %v = call(%qkv, -1, 5120, 1024) {target: "torch.narrow"}

At batch 1 a decoder step is many small GEMVs, each paying a launch and a half-empty GPU; q/k/v (and gate/up)
of a layer read the same activations, so one kernel over the concatenated rows does the work of three. The
packed layout, scales and offsets are per output row, so the fused weight is the members' tensors concatenated
along N (nothing is re-quantized: the function is unchanged, bit for bit in the reference runtime).

Members must share: the input value, k, the spec (bits, grid, p, group, scale kind and dtype), the rotation
attributes, an identical lookup table, and either all or none of offsets and bias. `allocate-bits(tie_siblings=True)`
gives siblings one spec, so that they can fuse. Run after `quantize` and before `lower`. Stats: groups fused,
qlinears before and after, and the groups left apart with the reason.
"""
from __future__ import annotations

import os

import torch

from qcomp.codegen.packing import ROW_GROUP
from qcomp.pass_manager import PassContext, register_pass
from qcomp.qir import Graph, Node, Ref
from qcomp.qir.types import TensorType

_PARTS = ("qweight", "scales", "lut", "offsets", "bias")  # qlinear args 1..5


def _key(n: Node) -> tuple:
    a = n.attrs
    return (n.args[0], a["k"], repr(sorted(a["spec"].items())), repr(a.get("rotate")), repr(a.get("hadamard")),
            bool(a.get("glu")))


def _why_apart(g: Graph, members: list[Node]) -> str | None:
    """None if `members` can run as one qlinear, else the reason."""
    first = members[0]
    for m in members:
        for i, part in enumerate(_PARTS, start=1):
            ref = m.args[i] if len(m.args) > i else None
            if (ref is None) != ((first.args[i] if len(first.args) > i else None) is None):
                return f"%{m.name} and %{first.name} differ in having {part}"
            if ref is not None and g.node(ref).op != "param":
                return f"%{m.name}: {part} is not a parameter"
        if not torch.equal(g.param(m.args[3]), g.param(first.args[3])):
            return f"%{m.name} and %{first.name} have different lookup tables"
        if not isinstance(m.type, TensorType):
            return f"%{m.name} has no tensor type"
    for m in members[:-1]:  # packed rows come in groups of ROW_GROUP: a member's pad rows may only end the stack
        if m.attrs["n"] % ROW_GROUP:
            return f"%{m.name} has {m.attrs['n']} rows, not a multiple of the packing's row group {ROW_GROUP}"
    return None


@register_pass("fuse-siblings")
def fuse_siblings(graph: Graph, ctx: PassContext):
    """Fuse qlinears of one input and one quantization into a single qlinear plus slices (see module docstring)."""
    g = graph.copy()
    groups: dict[tuple, list[Node]] = {}
    for n in g.nodes:
        if n.op == "qlinear":
            groups.setdefault(_key(n), []).append(n)
    fused, apart, before = 0, {}, sum(1 for n in g.nodes if n.op == "qlinear")
    for members in groups.values():
        if len(members) < 2:
            continue
        why = _why_apart(g, members)
        if why:
            apart["+".join(m.name for m in members)] = why
            continue
        _fuse(g, members)
        fused += 1
    after = sum(1 for n in g.nodes if n.op == "qlinear")
    return g, {"groups_fused": fused, "qlinears_before": before, "qlinears_after": after, "kept_apart": apart}


def joined_name(names: list[str]) -> str:
    """q_proj, k_proj, v_proj of one prefix -> prefix + q_k_v_proj: the common prefix and suffix kept once."""
    pre = os.path.commonprefix(names)
    suf = os.path.commonprefix([n[len(pre):][::-1] for n in names])[::-1]
    mids = [n[len(pre):len(n) - len(suf)] for n in names]
    return pre + "_".join(mids) + suf if all(mids) else "+".join(names)


def _fuse(g: Graph, members: list[Node]) -> None:
    first = members[0]
    layers = [m.attrs.get("layer") or m.name for m in members]
    layer = joined_name(layers)
    name = g.fresh_name(joined_name([m.name for m in members]))
    args = [first.args[0]]
    for i, part in enumerate(_PARTS, start=1):
        ref = first.args[i] if len(first.args) > i else None
        if ref is None:
            args.append(None)
        elif part == "lut":
            args.append(ref)  # identical in every member (checked): the first one's serves all
        else:
            t = torch.cat([g.param(m.args[i]) for m in members], dim=0).contiguous()
            target, i2 = f"{layer}.{part}", 1
            while target in g.params:
                target, i2 = f"{layer}.{part}_{i2}", i2 + 1
            args.append(Ref(g.add_param(target, t, before=first, name=f"{name}.{part}").name))
    n_total = sum(int(m.attrs["n"]) for m in members)
    t0 = first.type
    attrs = {k: v for k, v in first.attrs.items() if k not in ("layer", "n")}
    attrs.update({"layer": layer, "n": n_total, "fused": layers})
    # before the first member: the members' input is defined there, and the first member's users come after it
    node = g.add(Node(name, "qlinear", tuple(args), {}, attrs, TensorType(t0.dtype, t0.shape[:-1] + (n_total,))),
                 before=first)
    slices, start = [], 0
    for m in members:
        n = int(m.attrs["n"])
        sl = g.add(Node(g.fresh_name(m.name + "_slice"), "call", (Ref(node.name), -1, start, n), {},
                        {"target": "torch.narrow"}, m.type), before=first)
        g.replace_uses(m.name, Ref(sl.name))
        slices.append(sl)
        start += n
    for m in members:
        old = m.refs()[1:]
        g.erase(m)
        for r in old:
            if r.name in g and g.node(r.name).op == "param" and not any(r in u.refs() for u in g.nodes):
                g.erase(g.node(r.name))
    for m, sl in zip(members, slices):  # the slices take the members' names: later passes and dumps read naturally
        g.rename(sl, m.name)
