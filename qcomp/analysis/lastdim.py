"""Which QIR ops commute with an orthogonal transform Q of the last dim: op(x @ Q) == op(x) @ Q.

Used by fuse-hadamard to decide where a rotation can travel through the graph. An op is *transparent*
for a value with last dim d when its output also has last dim d and it is one of:

* sums of such values: add / sub (both operands tensors with last dim d; broadcasting over leading dims
  is fine, broadcasting over the last dim is not);
* scaling by a Python number, negation;
* layout ops that keep every row of the last dim intact: view/reshape/expand/unsqueeze/squeeze/flatten
  with an unchanged last dim, slice/select/index on a leading dim, transpose/permute keeping the last
  dim last, clone/contiguous, float->float casts (exact up to rounding);
* an RMSNorm without weight (||x Q|| = ||x||). A weighted RMSNorm is transparent only after its weight
  is folded into the linears it feeds (see `norm_fold_sinks`).

LayerNorm is not transparent: its mean subtraction x - mean(x) does not commute with Q. Anything else
(matmul, products of two tensors, activations, attention, ...) is not transparent either.
"""
from __future__ import annotations

from qcomp.qir import Graph, Node, Ref, TensorType

_ADD = {"aten.add.Tensor", "aten.sub.Tensor", "operator.add", "operator.sub", "torch.add", "torch.sub", "add", "sub"}
_SCALE = {"aten.mul.Tensor", "aten.mul.Scalar", "aten.div.Tensor", "aten.div.Scalar", "operator.mul",
          "operator.truediv", "torch.mul", "torch.div", "mul", "div"}
_NEG = {"aten.neg.default", "operator.neg", "torch.neg", "neg"}
_ROWWISE = {"view", "reshape", "_unsafe_view", "expand", "unsqueeze", "squeeze", "flatten", "unflatten",
            "clone", "contiguous", "expand_as", "view_as", "reshape_as"}
_CASTS = {"to", "_to_copy", "float", "double", "half", "bfloat16", "type_as"}
_FLOAT = {"f16", "bf16", "f32", "f64"}


def last_dim(g: Graph, v) -> int | None:
    """The static last dim of value `v` (a Ref or a node name), or None if unknown / not a tensor."""
    if not isinstance(v, (Ref, str)):
        return None
    t = g.node(v).type
    if isinstance(t, TensorType) and t.rank >= 1 and isinstance(t.shape[-1], int):
        return t.shape[-1]
    return None


def _base(target: str) -> str:
    if target.startswith(("aten.", "prims.")):
        return target.split(".")[1]
    return target.rsplit(".", 1)[-1]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _norm_dim(dim, rank: int) -> int | None:
    if not isinstance(dim, int) or isinstance(dim, bool):
        return None
    return dim + rank if dim < 0 else dim


def tensor_inputs(g: Graph, node: Node) -> list[Ref]:
    """The Refs among a node's args/kwargs that are tensors (not symbolic ints or other values)."""
    return [r for r in node.refs() if isinstance(g.node(r).type, TensorType)]


def is_transparent(g: Graph, node: Node, d: int) -> bool:
    """True when `node` maps (inputs @ Q) to (output @ Q) for every orthogonal Q on a last dim of size d.

    Requires every tensor input and the output to have last dim d. RMSNorms count only without weight.
    """
    if last_dim(g, node.name) != d:
        return False
    ins = tensor_inputs(g, node)
    if not ins or any(last_dim(g, r) != d for r in ins):
        return False
    if node.op == "norm":
        return node.attrs.get("kind") == "rms" and (len(node.args) < 2 or node.args[1] is None) and \
            (len(node.args) < 3 or node.args[2] is None)
    if node.op not in ("call", "call_method", "elementwise", "reshape", "transpose"):
        return False
    target = node.attrs.get("target") or ""
    base = _base(target) if node.op != "call_method" else target
    x = node.args[0] if node.args else None
    if not isinstance(x, Ref):
        return False
    rank = g.node(x).tensor_type.rank
    rest = list(node.args[1:]) + list(node.kwargs.values())
    if base in _ADD or target in _ADD:
        others = [a for a in node.args[1:2]]
        alpha = node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 else 1)
        return len(ins) == 2 and len(node.args) >= 2 and isinstance(others[0], Ref) and _is_number(alpha)
    if base in _SCALE or target in _SCALE:
        return len(ins) == 1 and len(node.args) == 2 and _is_number(node.args[1]) and not node.kwargs
    if base in _NEG or target in _NEG:
        return len(ins) == 1
    if len(ins) != 1 or any(isinstance(a, Ref) and a in ins for a in rest):
        return False
    if base in _ROWWISE:
        return True  # last dims of input and output are both d (checked above): rows map to rows
    if base in _CASTS:
        return g.node(x).tensor_type.dtype in _FLOAT and g.node(node.name).tensor_type.dtype in _FLOAT
    if base in ("slice", "select", "narrow"):
        dim = _norm_dim(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0), rank)
        if dim is None:
            return False
        if dim != rank - 1:
            return True
        # slicing the last dim keeps it only as a full, unit-step slice
        start, end, step = (list(node.args[2:5]) + [None, None, None])[:3]
        return base == "slice" and start in (None, 0) and (end is None or (isinstance(end, int) and end >= d)) \
            and step in (None, 1)
    if base in ("transpose", "swapaxes"):
        a, b = (_norm_dim(v, rank) for v in node.args[1:3])
        return a is not None and b is not None and rank - 1 not in (a, b)
    if base == "permute":
        dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) else node.args[1:]
        return len(dims) == rank and _norm_dim(dims[-1], rank) == rank - 1
    if base == "getitem":
        idx = node.args[1]
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(i is Ellipsis or isinstance(i, (Ref, list)) for i in idx):
            return False
        return len([i for i in idx if i is not None]) < rank
    return False


_META_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"}
_META_CALLS = {"aten.sym_size.int", "aten.sym_numel.default", "aten.sym_stride.int", "aten.dim.default",
               "size", "dim", "numel", "type", "get_device"}


def is_metadata_use(node: Node) -> bool:
    """`node` reads only the shape/dtype/device of its input, which a rotation does not change."""
    target = node.attrs.get("target")
    if target == "builtins.getattr":
        return len(node.args) == 2 and node.args[1] in _META_ATTRS
    return target in _META_CALLS


def is_rotation_sink(g: Graph, node: Node, value: str) -> bool:
    """`node` is a linear that reads `value` as its input (and nowhere else)."""
    return node.op == "linear" and node.args[0] == Ref(value) and Ref(value) not in node.args[1:]


def norm_fold_sinks(g: Graph, norm: Node, users: dict[str, list[Node]]) -> list[tuple[Node, list[Node]]] | None:
    """Where the weight of RMSNorm `norm` can be folded: [(linear, [rotate nodes on the way])], or None.

    Every use of the norm's output must reach a linear's input through row-wise layout ops
    (transparent ops with one tensor input) and forward rotations; then scaling by the weight can move
    into those linears. Any other use (an add, the graph output, ...) makes the fold impossible.
    """
    d = last_dim(g, norm.name)
    if d is None:
        return None
    sinks: list[tuple[Node, list[Node]]] = []
    stack: list[tuple[str, list[Node]]] = [(norm.name, [])]
    while stack:
        v, rots = stack.pop()
        for u in users[v]:
            if is_metadata_use(u):
                continue
            if is_rotation_sink(g, u, v):
                sinks.append((u, rots))
            elif u.op == "rotate" and not u.attrs.get("inverse", False) and last_dim(g, u.name) == d:
                stack.append((u.name, rots + [u]))
            elif u.op != "norm" and is_transparent(g, u, d) and len(tensor_inputs(g, u)) == 1:
                stack.append((u.name, rots))  # row-wise layout ops and scalings commute with diag(weight)
            else:
                return None
    return sinks or None

