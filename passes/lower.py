"""lower: choose the generated kernel for every qlinear and fuse the online rotations the kernels can absorb.

The lowering table (which kernel runs which op; rendering the kernel's text is codegen's job):

| op                                   | condition                               | kernel (qcomp.codegen)           |
|--------------------------------------|-----------------------------------------|----------------------------------|
| qlinear, batch M <= 16 (decode)      | any bits 1..8, uniform / lut p=1,2      | `gemv` KernelSpec, fused rotation |
| qlinear, batch M > 16                | same                                    | `gemm` KernelSpec (tensor cores); |
|                                      |                                         | a fused rotation becomes one     |
|                                      |                                         | separate pass over x (ops.py)    |
| rotate -> qlinear(s)                 | not inverse, size a power of two in     | absorbed: qlinear.attrs.rotate = |
|                                      | 16..MAX_FUSED_HADAMARD (256), k % size  | {size, seed}; the rotate goes    |
|                                      | == 0, every user a qlinear without one  | when nothing else reads it       |
| rotate, any other case               | (inverse, > 256, a non-qlinear user)    | stays a separate op              |

Every qlinear gets `attrs["kernel"] = {"gemv": NAME, "gemm": NAME}`: the KernelSpec names of the default
(heuristic-first) choice for batch 1 and batch 256 (the runtime may autotune the tiles per shape; the
variant, bits, grid, group and rotation are fixed here). When a dump directory is set, the Triton source of
each distinct spec is written to `dump_dir/kernels/NAME.py`.

The reference runtime honours `attrs["rotate"]` on qlinear by rotating x first, so lowering never
changes the function. Stats: rotations fused and kept (with the reason), qlinears lowered, kernels.
"""
from __future__ import annotations

from qcomp.codegen.kernel_spec import MAX_FUSED_HADAMARD, KernelSpec
from qcomp.codegen.ops import base_spec
from qcomp.codegen.render import kernel_source
from qcomp.codegen.tune import candidates
from qcomp.pass_manager import PassContext, register_pass
from qcomp.qir import Graph, Ref

_ACT = {"float16": "fp16", "bfloat16": "bf16", "f16": "fp16", "bf16": "bf16"}  # torch names and QIR's short ones


def act_dtype(g: Graph, ref) -> str:
    t = getattr(g.node(ref), "type", None)
    dt = str(getattr(t, "dtype", "") or "").replace("torch.", "")
    return _ACT.get(dt, "fp16")  # float32 graphs run the kernels on their fp16 cast


def why_not_qlinear_inputs(node, users) -> str | None:
    """None if every one of `users` is a qlinear that reads `node` as its input x (args[0]) and nowhere else, as a
    pass needs that folds `node` into its readers' kernels; else the reason."""
    for u in users:
        if u.op != "qlinear":
            return f"user %{u.name} is a {u.op}, not a qlinear"
        if u.args[0] != Ref(node.name) or Ref(node.name) in u.refs()[1:]:
            return f"user %{u.name} reads it other than as its input"
    return None


def _fusable(g: Graph, rot, users) -> str | None:
    """None if every user can absorb `rot`, else the reason it stays."""
    a = rot.attrs
    h = a.get("size")
    if a.get("inverse"):
        return "inverse rotation"
    if not isinstance(h, int) or h & (h - 1) or not 16 <= h <= MAX_FUSED_HADAMARD:
        return f"size {h} outside the fused range 16..{MAX_FUSED_HADAMARD}"
    if not users:
        return "unused"
    why = why_not_qlinear_inputs(rot, users)
    if why:
        return why
    for u in users:
        if u.attrs.get("rotate"):
            return f"user %{u.name} already has a fused rotation"
        if u.attrs["k"] % h:
            return f"user %{u.name}: k = {u.attrs['k']} not a multiple of {h}"
    return None


def kernel_specs(attrs: dict, act: str) -> dict[str, KernelSpec]:
    """The default gemv (batch 1) and gemm (batch 256) specs of one qlinear's attrs."""
    q = attrs["spec"]
    grid = "lut" if q["grid"] not in ("uniform", "uniform_asym") else q["grid"]
    had = (attrs.get("rotate") or {}).get("size") or 0
    dtype = {"fp16": __import__("torch").float16, "bf16": __import__("torch").bfloat16}[act]
    n, k = attrs["n"], attrs["k"]
    glu = bool(attrs.get("glu"))  # fuse-glu: the gemv reads silu(gate) * up; above 4 rows torch computes it first
    norm = attrs.get("norm") is not None  # fuse-norm: the gemv applies the RMSNorm; above 4 rows torch does
    gemv = candidates(base_spec(dtype, q["bits"], q.get("p", 1), q["group_size"], grid, had, glu, norm), 1, n, k)[0][0]
    gemm = candidates(base_spec(dtype, q["bits"], q.get("p", 1), q["group_size"], grid, 0), 256, n, k)[0][0]
    return {"gemv": gemv, "gemm": gemm}


@register_pass("lower")
def lower(graph: Graph, ctx: PassContext):
    """Pick the kernel of every qlinear and fuse rotate nodes (size <= 256) into the qlinears they feed."""
    g = graph.copy()
    fused, kept = 0, {}
    users = g.users()
    for rot in [n for n in g.nodes if n.op == "rotate"]:
        us = users.get(rot.name, [])
        why = _fusable(g, rot, us)
        if why:
            kept[rot.name] = why
            continue
        src = rot.args[0]
        for u in us:
            u.args = (src,) + tuple(u.args[1:])
            u.attrs["rotate"] = {"size": int(rot.attrs["size"]), "seed": rot.attrs.get("seed")}
            fused += 1
        g.erase(rot)
        users = g.users()
    specs: dict[str, KernelSpec] = {}
    lowered = 0
    for node in [n for n in g.nodes if n.op == "qlinear"]:
        chosen = kernel_specs(node.attrs, act_dtype(g, node.args[0]))
        node.attrs["kernel"] = {v: s.name() for v, s in chosen.items()}
        for s in chosen.values():
            specs[s.name()] = s
        lowered += 1
    if ctx.dump_dir is not None and specs:
        d = ctx.dump_dir / "kernels"
        d.mkdir(parents=True, exist_ok=True)
        for name, s in sorted(specs.items()):
            (d / f"{name}.py").write_text(kernel_source(s))
    stats = {"qlinears": lowered, "rotations_fused": fused, "rotations_kept": kept, "kernels": sorted(specs)}
    return g, stats
