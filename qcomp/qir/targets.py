"""Names of the callables that `call`-like nodes carry in attrs["target"], and their safe resolution.

Names: "aten.mul.Tensor" (torch.ops OpOverloads), "qcomp.rms_norm.default" (our custom ops),
"operator.getitem", "math.sqrt", "builtins.getattr", "torch.cat", "torch.nn.functional.silu".
Resolution only looks inside an allowlist of namespaces and refuses names that do I/O or import code,
so a graph read from disk cannot reach anything but tensor math.
"""
from __future__ import annotations

import builtins
import math
import operator

import torch

_BUILTINS = {"getattr", "len", "int", "float", "bool", "max", "min", "abs", "range", "round", "slice", "tuple", "list"}
_DENY = ("load", "save", "hub", "compile", "jit", "export", "serialization", "package", "utils", "distributed",
         "cuda.memory", "set_", "manual_seed", "autograd", "library", "classes", "_C", "_dynamo", "fx", "multiprocessing")


class TargetError(ValueError):
    pass


def target_name(fn) -> str:
    """The QIR name of a callable; round-trips through resolve_target or raises TargetError."""
    if isinstance(fn, torch._ops.OpOverload):
        name = str(fn)
    elif isinstance(fn, torch._ops.OpOverloadPacket):
        name = str(fn.default) if hasattr(fn, "default") else str(fn)
    else:
        module = getattr(fn, "__module__", None) or ""
        module = {"_operator": "operator"}.get(module, module)
        qual = getattr(fn, "__qualname__", None) or ""
        short = getattr(fn, "__name__", None) or ""
        candidates = [f"{module}.{qual}", f"{module}.{short}", f"torch.{short}", f"torch.nn.functional.{short}"]
        for name in candidates:
            try:
                if resolve_target(name) is fn:
                    return name
            except TargetError:
                pass
        raise TargetError(
            f"callable {fn!r} cannot be named in QIR; only torch, torch.ops, operator and math callables can"
        )
    try:
        if resolve_target(name) is not fn:
            raise TargetError(f"{name!r} does not resolve back to {fn!r}")
    except TargetError as e:
        raise TargetError(
            f"callable {fn!r} cannot be named in QIR ({e}); only torch, torch.ops, operator and math callables are"
        ) from None
    return name


_QCOMP_OP_MODULES = ("qcomp.codegen.attention",)  # define torch.ops.qcomp.* ops that graphs name (rms_norm: capture)


def _register_qcomp_ops() -> None:
    """Import the modules that register qcomp's torch ops, so that a graph loaded with `import qcomp` alone resolves
    them (importing them is cheap and needs no triton)."""
    import importlib

    for mod in _QCOMP_OP_MODULES:
        importlib.import_module(mod)


def resolve_target(name: str):
    """Resolve a QIR target name to a callable, or raise TargetError naming the problem."""
    if not isinstance(name, str) or not name:
        raise TargetError(f"target must be a non-empty string, got {name!r}")
    head, _, rest = name.partition(".")
    if head in ("aten", "qcomp", "prims", "quantized_decomposed"):
        parts = name.split(".")
        if len(parts) != 3:
            raise TargetError(f"op target {name!r} must look like namespace.op.overload")
        if parts[0] == "qcomp":
            _register_qcomp_ops()
        try:
            return getattr(getattr(getattr(torch.ops, parts[0]), parts[1]), parts[2])
        except (AttributeError, RuntimeError):
            raise TargetError(f"unknown torch op {name!r}") from None
    if head == "operator":
        obj = getattr(operator, rest, None)
    elif head == "math":
        obj = getattr(math, rest, None)
    elif head == "builtins":
        obj = getattr(builtins, rest, None) if rest in _BUILTINS else None
    elif head == "torch":
        if any(part.startswith(d) or part == d for part in rest.split(".") for d in _DENY):
            raise TargetError(f"target {name!r} is not allowed in QIR (I/O, compilation or global state)")
        obj = torch
        for part in rest.split("."):
            if part.startswith("__"):
                obj = None
                break
            obj = getattr(obj, part, None)
            if obj is None:
                break
    else:
        obj = None
    if obj is None or not callable(obj):
        raise TargetError(f"unknown or disallowed target {name!r}; allowed: aten.*, qcomp.*, operator.*, math.*, torch.*")
    return obj


def resolve_method(name: str):
    """A Tensor method by name (for call_method nodes)."""
    if not isinstance(name, str) or name.startswith("_") or not callable(getattr(torch.Tensor, name, None)):
        raise TargetError(f"{name!r} is not a public torch.Tensor method")
    if name in ("numpy", "tolist", "storage", "untyped_storage", "data_ptr", "share_memory_", "pin_memory", "register_hook"):
        raise TargetError(f"Tensor method {name!r} is not allowed in QIR")
    return name


# Readable op categories for call-like ops (execution is the same: call the target).
_CATEGORY_BY_SUFFIX = {
    "elementwise": {"add", "sub", "mul", "div", "neg", "silu", "gelu", "relu", "sigmoid", "tanh", "exp", "pow",
                    "rsqrt", "sqrt", "softmax", "_softmax", "cos", "sin", "where", "mean", "sum", "erf", "reciprocal",
                    "clamp", "maximum", "minimum", "abs", "log", "masked_fill", "gt", "lt", "eq", "ne", "ge", "le"},
    "matmul": {"matmul", "mm", "bmm", "baddbmm", "addmm", "einsum"},
    "attention": {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
                  "_scaled_dot_product_efficient_attention", "_scaled_dot_product_attention_math"},
    "reshape": {"view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "flatten", "unflatten", "expand",
                "contiguous", "clone", "split", "chunk", "cat", "stack", "slice", "select"},
    "transpose": {"transpose", "permute", "t", "swapaxes", "movedim"},
}


def category_of(target: str) -> str:
    if target.startswith(("aten.", "prims.")):
        base = target.split(".")[1]
    else:
        base = target.rsplit(".", 1)[-1]
    base = base.rstrip("_") if base not in ("_softmax", "_unsafe_view") else base
    for cat, names in _CATEGORY_BY_SUFFIX.items():
        if base in names:
            return cat
    return "call"
