"""Capture with torch.export (strict=False), for models fx cannot trace (e.g. transformers 5.x).

Batch and sequence dims are exported as dynamic (Dim.AUTO) where torch.export agrees; their sympy
symbols appear in QIR types. RMSNorm modules are swapped, for the duration of the export only, for
the single op `qcomp::rms_norm`, so they stay one `norm` node. Linear, embedding and layer_norm ATen ops
become QIR linear/embedding/norm nodes named after their module (from the weight's parameter name).
"""
from __future__ import annotations

import contextlib
import inspect
import types

import torch
from torch import nn
from torch.export import Dim
from torch.export.graph_signature import ConstantArgument, InputKind

from ..qir import Graph, Node, Ref
from ..qir.targets import TargetError, category_of, target_name
from ..qir.types import ANY, type_of_example
from .convert import CaptureError, convert_arg, output_structure
from .norms import is_rms_norm, module_rms_eps, rms_norm

_PARAM_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


@contextlib.contextmanager
def rms_norms_as_ops(model: nn.Module):
    """Temporarily route every RMSNorm's forward through qcomp::rms_norm (instance attribute, removed after)."""
    patched = []
    try:
        for m in model.modules():
            if is_rms_norm(m):
                eps = module_rms_eps(m)
                m.forward = types.MethodType(lambda self, x, _eps=eps: rms_norm(x, self.weight, _eps), m)
                patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward


def run_export(model: nn.Module, args: tuple, kwargs: dict, dynamic: bool) -> torch.export.ExportedProgram:
    dyn = None
    if dynamic:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
        dyn = {k: ({d: Dim.AUTO for d in range(v.dim())} if isinstance(v, torch.Tensor) else None)
               for k, v in bound.arguments.items()}
    with rms_norms_as_ops(model), torch.no_grad():
        return torch.export.export(model, args, kwargs, strict=False, dynamic_shapes=dyn)


def capture_export(model: nn.Module, args: tuple, kwargs: dict | None = None, dynamic: bool = True) -> Graph:
    kwargs = dict(kwargs or {})
    try:
        ep = run_export(model, args, kwargs, dynamic)
    except Exception:
        if not dynamic:
            raise
        ep = run_export(model, args, kwargs, False)
        dynamic = False
    return import_exported_program(ep, type(model).__name__, dynamic)


def import_exported_program(ep: torch.export.ExportedProgram, name: str, dynamic: bool) -> Graph:
    sig = ep.graph_signature
    state = {**ep.state_dict, **ep.constants}
    kinds = {spec.arg.name: spec for spec in sig.input_specs}
    g = Graph(name, {"capture": "export", "dynamic": dynamic})
    param_targets: dict[str, str] = {}
    n_inputs = 0
    user_inputs = [s.arg.name for s in sig.input_specs
                   if s.kind == InputKind.USER_INPUT and not isinstance(s.arg, ConstantArgument)]
    constants = {s.arg.name for s in sig.input_specs if isinstance(s.arg, ConstantArgument)}
    for en in ep.graph.nodes:
        where = f"exported node {en.name!r} ({en.op} {en.target})"
        qt = type_of_example(en.meta.get("val"))
        if en.op == "placeholder":
            spec = kinds.get(en.name)
            if spec is not None and spec.kind in _PARAM_KINDS:
                tensor = state[spec.target]
                param_targets[en.name] = spec.target
                g.add(Node(en.name, "param", attrs={"target": spec.target}, type=type_of_example(tensor)))
                g.params[spec.target] = tensor.detach()
            elif en.name in constants:
                if en.users:
                    raise CaptureError(f"{where}: a constant input ({en.name}) is used by the graph; pass it as a tensor or drop it")
            elif en.name in user_inputs:
                g.add(Node(en.name, "input", attrs={"index": n_inputs, "name": en.name}, type=qt))
                n_inputs += 1
            else:
                raise CaptureError(f"{where}: unsupported input kind {spec.kind if spec else None}")
        elif en.op == "call_function":
            g.add(_convert_call(en, where, qt, param_targets))
        elif en.op == "output":
            flat = [convert_arg(a, where) for a in en.args[0]]
            out_spec = ep.call_spec.out_spec
            structure, container = output_structure(flat, out_spec) if out_spec is not None else (tuple(flat), None)
            g.add(Node(g.fresh_name("out"), "output", (structure,), attrs={"container": container} if container else {}, type=ANY))
        else:
            raise CaptureError(f"{where}: unsupported fx op {en.op!r} in exported program")
    return g


def _layer_of(ref_name: str, param_targets: dict[str, str]) -> str | None:
    t = param_targets.get(ref_name)
    return t.rsplit(".", 1)[0] if t and t.endswith(".weight") else t


def _module_path(en) -> str | None:
    """The innermost module that issued this op (so tied weights still get their own layer name)."""
    stack = en.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, _cls = list(stack.values())[-1]
    return path or None


def _convert_call(en, where, qt, param_targets) -> Node:
    t = en.target
    args = tuple(convert_arg(a, where) for a in en.args)
    kwargs = {k: convert_arg(v, where) for k, v in en.kwargs.items()}
    aten = torch.ops.aten
    if t is aten.linear.default and isinstance(args[1], Ref) and args[1].name in param_targets:
        x, w, b = (list(args) + [None])[:3]
        return Node(en.name, "linear", (x, w, b), attrs={"layer": _module_path(en) or _layer_of(w.name, param_targets)}, type=qt)
    if t is aten.embedding.default and isinstance(args[0], Ref) and args[0].name in param_targets:
        return Node(en.name, "embedding", (args[0], args[1]), attrs={"layer": _layer_of(args[0].name, param_targets)}, type=qt)
    if t is aten.layer_norm.default:
        x, shape, w, b, eps = (list(args) + [None, None, 1e-5])[:5]
        if isinstance(eps, float) and kwargs == {}:
            layer = _layer_of(w.name, param_targets) if isinstance(w, Ref) else None
            return Node(en.name, "norm", (x, w, b), attrs={"kind": "layer", "eps": eps, "shape": list(shape), "layer": layer}, type=qt)
    if t is torch.ops.qcomp.rms_norm.default:
        x, w, eps = args
        return Node(en.name, "norm", (x, w, None), attrs={"kind": "rms", "eps": float(eps), "layer": _layer_of(w.name, param_targets)}, type=qt)
    try:
        tname = target_name(t)
    except TargetError as e:
        raise CaptureError(f"{where}: {e}") from None
    return Node(en.name, category_of(tname), args, kwargs, {"target": tname}, qt)
