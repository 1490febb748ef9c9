"""Well-formedness checks run between passes: def before use, one output, known ops, parameters
present with matching types, linear/qlinear/rotate/norm shapes and quant specs consistent."""
from __future__ import annotations

from .graph import ALL_OPS, CALL_OPS, Graph, Node, Ref
from .targets import TargetError, resolve_method, resolve_target
from .types import TensorType


class VerificationError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        super().__init__("QIR verification failed:\n  " + "\n  ".join(problems[:10]) + more)


def _static(t) -> tuple | None:
    return tuple(t.shape) if isinstance(t, TensorType) else None


def verify(g: Graph) -> None:
    problems: list[str] = []
    seen: set[str] = set()
    outputs = 0
    for n in g.nodes:
        at = f"%{n.name} ({n.op})"
        if n.op not in ALL_OPS:
            problems.append(f"{at}: unknown op {n.op!r}")
        for r in n.refs():
            if r.name not in seen:
                problems.append(f"{at}: uses %{r.name} before it is defined" if r.name in g else f"{at}: uses undefined %{r.name}")
        seen.add(n.name)
        try:
            _check_node(g, n)
        except _Bad as e:
            problems.append(f"{at}: {e}")
        if n.op == "output":
            outputs += 1
    if outputs != 1:
        problems.append(f"graph has {outputs} output nodes, expected exactly 1")
    elif g.nodes[-1].op != "output":
        problems.append("the output node must be the last node")
    used_targets = {n.attrs.get("target") for n in g.nodes if n.op == "param"}
    for t in set(g.params) - used_targets:
        problems.append(f"parameter {t!r} is stored but no param node reads it")
    if problems:
        raise VerificationError(problems)


class _Bad(Exception):
    pass


def _param_shape(g: Graph, v) -> tuple | None:
    if not isinstance(v, Ref) or v.name not in g:
        return None
    node = g.node(v)
    return _static(node.type)


def _check_node(g: Graph, n: Node) -> None:
    a = n.attrs
    if n.op == "input":
        if not isinstance(a.get("index"), int):
            raise _Bad("input needs an integer attr 'index'")
    elif n.op == "param":
        t = a.get("target")
        if t not in g.params:
            raise _Bad(f"parameter {t!r} is missing from the graph's parameters")
        if isinstance(n.type, TensorType) and not n.type.matches(g.params[t]):
            real = TensorType.of(g.params[t])
            raise _Bad(f"declared type {n.type} but parameter {t!r} is {real}")
    elif n.op == "linear":
        if len(n.args) < 2:
            raise _Bad("linear takes (x, weight, bias)")
        w = _param_shape(g, n.args[1])
        if w is None or len(w) != 2:
            raise _Bad("linear weight must be a 2-D tensor value")
        _check_io(g, n, k=w[1], nout=w[0])
    elif n.op == "qlinear":
        _check_qlinear(g, n)
    elif n.op == "rotate":
        size = a.get("size")
        if not isinstance(size, int) or size < 1:
            raise _Bad("rotate needs an integer attr 'size'")
        x = _param_shape(g, n.args[0]) if n.args else None
        if x and isinstance(x[-1], int) and x[-1] % size:
            raise _Bad(f"rotation block {size} does not divide the last dim {x[-1]}")
    elif n.op == "norm":
        if a.get("kind") not in ("rms", "layer"):
            raise _Bad(f"norm kind must be 'rms' or 'layer', got {a.get('kind')!r}")
        if not isinstance(a.get("eps"), float):
            raise _Bad("norm needs a float attr 'eps'")
    elif n.op == "call_method":
        try:
            resolve_method(a.get("target"))
        except TargetError as e:
            raise _Bad(str(e)) from None
    elif n.op in CALL_OPS:
        try:
            resolve_target(a.get("target"))
        except TargetError as e:
            raise _Bad(str(e)) from None


def _check_io(g: Graph, n: Node, k, nout) -> None:
    x = _param_shape(g, n.args[0])
    if x and isinstance(x[-1], int) and isinstance(k, int) and x[-1] != k:
        raise _Bad(f"input last dim {x[-1]} does not match in_features {k}")
    out = _static(n.type)
    if out and isinstance(out[-1], int) and isinstance(nout, int) and out[-1] != nout:
        raise _Bad(f"output last dim {out[-1]} does not match out_features {nout}")


def _check_qlinear(g: Graph, n: Node) -> None:
    from qcomp.numerics.quant_spec import QuantSpec, QuantSpecError

    a = n.attrs
    try:
        spec = QuantSpec.from_dict(a.get("spec") or {})
    except (QuantSpecError, TypeError) as e:
        raise _Bad(f"invalid quant spec: {e}") from None
    nn_, k = a.get("n"), a.get("k")
    if not isinstance(nn_, int) or not isinstance(k, int):
        raise _Bad("qlinear needs integer attrs 'n' and 'k'")
    try:
        spec.check_shape(nn_, k)
    except QuantSpecError as e:
        raise _Bad(str(e)) from None
    if len(n.args) not in (6, 8):
        raise _Bad("qlinear takes (x, packed, scales, lut, offsets, bias[, norm_weight, residual])")
    from qcomp.codegen.packing import packed_shape

    shapes = [_param_shape(g, v) for v in n.args[1:4]]
    want_packed = tuple(packed_shape(nn_, k // spec.p, spec.code_bits))
    if shapes[0] != want_packed:
        raise _Bad(f"packed codes have shape {shapes[0]}, expected {want_packed} for {spec.short()} [{nn_}, {k}]")
    want_scales = (nn_, k // spec.group(k))
    if shapes[1] != want_scales:
        raise _Bad(f"scales have shape {shapes[1]}, expected {want_scales}")
    if shapes[2] != (spec.n_points, spec.p):
        raise _Bad(f"lut has shape {shapes[2]}, expected {(spec.n_points, spec.p)}")
    if spec.has_offset != (n.args[4] is not None):
        raise _Bad("offsets must be present exactly for grid uniform_asym")
    rot = a.get("rotate")
    if rot is not None and (not isinstance(rot, dict) or not isinstance(rot.get("size"), int) or k % rot["size"]):
        raise _Bad(f"rotate attr must be {{size, seed}} with size dividing k = {k}, got {rot!r}")
    if a.get("glu") not in (None, False, True):
        raise _Bad(f"glu attr must be a bool, got {a.get('glu')!r}")
    _check_io(g, n, k=2 * k if a.get("glu") else k, nout=nn_)  # glu: x = [gate | up], 2k features
    _check_qlinear_fusions(g, n, k)


def _check_qlinear_fusions(g: Graph, n: Node, k: int) -> None:
    """fuse-norm's norm_weight (args[6], attr norm: {eps}) and fuse-residual's residual (args[7])."""
    norm_w, res = (n.args[6], n.args[7]) if len(n.args) == 8 else (None, None)
    norm = n.attrs.get("norm")
    if (norm is not None) != (norm_w is not None):
        raise _Bad("a qlinear has a norm_weight (args[6]) exactly when it has the attr norm: {eps}")
    if norm is not None:
        if not isinstance(norm, dict) or set(norm) != {"eps"} or not isinstance(norm["eps"], float):
            raise _Bad(f"norm attr must be {{eps: float}}, got {norm!r}")
        if n.attrs.get("glu"):
            raise _Bad("a qlinear reads either silu(gate) * up (glu) or an RMSNorm of x (norm), not both")
        shape = _param_shape(g, norm_w)
        if shape and shape != (k,):
            raise _Bad(f"norm_weight has shape {shape}, expected ({k},)")
    if res is not None:
        shape, out = _param_shape(g, res), _static(n.type)
        if shape and out and shape != out:
            raise _Bad(f"residual has shape {shape}, the output {out}")
