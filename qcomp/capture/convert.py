"""Helpers shared by the fx and export importers: argument conversion and output structures."""
from __future__ import annotations

import torch
import torch.fx
import torch.utils._pytree as pytree

from ..qir import Ref


class CaptureError(RuntimeError):
    """The model could not be captured into QIR."""


def convert_arg(a, where: str):
    """fx argument (Nodes, constants, containers) -> QIR value (Refs, constants, containers)."""
    if isinstance(a, torch.fx.Node):
        return Ref(a.name)
    if isinstance(a, (list,)):
        return [convert_arg(x, where) for x in a]
    if isinstance(a, (tuple, torch.Size)):
        return tuple(convert_arg(x, where) for x in a)
    if isinstance(a, dict):
        return {str(k): convert_arg(v, where) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(convert_arg(a.start, where), convert_arg(a.stop, where), convert_arg(a.step, where))
    if a is None or a is Ellipsis or isinstance(a, (bool, int, float, str, torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return a
    raise CaptureError(f"{where}: argument {a!r} of type {type(a).__name__} has no QIR form")


def output_structure(value, spec: pytree.TreeSpec | None = None) -> tuple[object, str | None]:
    """A QIR value mirroring the model's output structure (leaves are Refs), and the container kind.

    ModelOutput-like dicts become plain dicts with container "ModelOutput" so that the compiled model
    can give attribute access back.
    """
    if spec is None:
        leaves, spec = pytree.tree_flatten(value)
    else:
        leaves = list(value)
    it = iter(leaves)

    def build(s: pytree.TreeSpec):
        if s.is_leaf():
            return next(it)
        kids = [build(c) for c in s.children()]
        if s.type is tuple or s.type is list:
            return s.type(kids)
        if s.type is type(None):
            return None
        if issubclass(s.type, dict) or (s.context is not None and isinstance(s.context, (list, tuple))):
            keys = s.context[0] if isinstance(s.context, tuple) and len(s.context) == 2 and isinstance(s.context[0], list) else s.context
            return dict(zip([str(k) for k in keys], kids))
        return tuple(kids)

    structure = build(spec)
    container = None
    if spec.type not in (tuple, list, dict, type(None)) and not spec.is_leaf():
        container = "ModelOutput"
    return structure, container
