"""Capture with torch.fx.symbolic_trace: nn.Linear, nn.Embedding, nn.LayerNorm and RMSNorms stay
leaves and become QIR linear/embedding/norm ops; everything else becomes call/call_method nodes.
Types come from running the traced graph once on the example inputs."""
from __future__ import annotations

import torch
import torch.fx
from torch import nn

from ..qir import Graph, Node, Ref
from ..qir.targets import TargetError, category_of, resolve_method, target_name
from ..qir.types import ANY, type_of_example
from .convert import CaptureError, convert_arg
from .norms import is_rms_norm, module_rms_eps

LEAF_TYPES = (nn.Linear, nn.Embedding, nn.LayerNorm)


class _Tracer(torch.fx.Tracer):
    def __init__(self, model: nn.Module):
        super().__init__()
        # probe RMSNorms before tracing: during tracing, calling a module would be traced too
        self.rms_norms = {id(m) for m in model.modules() if is_rms_norm(m)}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAF_TYPES) or id(m) in self.rms_norms


class _TypeRecorder(torch.fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.types = {}

    def run_node(self, n):
        result = super().run_node(n)
        self.types[n.name] = type_of_example(result)
        return result


def fx_trace(model: nn.Module) -> torch.fx.GraphModule:
    tracer = _Tracer(model)
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def capture_fx(model: nn.Module, example_inputs: tuple) -> Graph:
    gm = fx_trace(model)
    recorder = _TypeRecorder(gm)
    with torch.no_grad():
        recorder.run(*example_inputs)
    types = recorder.types
    g = Graph(type(model).__name__, {"capture": "fx"})
    params_by_target: dict[str, Node] = {}
    modules = dict(gm.named_modules())

    def param(target: str, tensor: torch.Tensor | None):
        if tensor is None:
            return None
        if target not in params_by_target:
            params_by_target[target] = g.add_param(target, tensor.detach(), before=None, name="p_" + target)
        return Ref(params_by_target[target].name)

    n_inputs = 0
    for fn in gm.graph.nodes:
        where = f"fx node {fn.name!r} ({fn.op} {fn.target})"
        qt = types.get(fn.name, ANY)
        if fn.op == "placeholder":
            g.add(Node(fn.name, "input", attrs={"index": n_inputs, "name": fn.target}, type=qt))
            n_inputs += 1
        elif fn.op == "get_attr":
            obj = gm
            for part in fn.target.split("."):
                obj = getattr(obj, part)
            if not isinstance(obj, torch.Tensor):
                raise CaptureError(f"{where}: attribute is a {type(obj).__name__}, not a tensor")
            ref = param(fn.target, obj)
            g.add(Node(fn.name, "call", (ref,), attrs={"target": "aten.alias.default"}, type=qt))
        elif fn.op == "call_module":
            m = modules[fn.target]
            x = convert_arg(fn.args[0], where)
            name = fn.target
            if isinstance(m, nn.Linear):
                node = Node(fn.name, "linear", (x, param(f"{name}.weight", m.weight), param(f"{name}.bias", m.bias)), attrs={"layer": name})
            elif isinstance(m, nn.Embedding):
                node = Node(fn.name, "embedding", (param(f"{name}.weight", m.weight), x), attrs={"layer": name})
            elif isinstance(m, nn.LayerNorm):
                node = Node(fn.name, "norm", (x, param(f"{name}.weight", m.weight), param(f"{name}.bias", m.bias)),
                            attrs={"kind": "layer", "eps": float(m.eps), "shape": list(m.normalized_shape), "layer": name})
            else:  # RMSNorm
                node = Node(fn.name, "norm", (x, param(f"{name}.weight", m.weight), None),
                            attrs={"kind": "rms", "eps": module_rms_eps(m), "layer": name})
            node.type = qt
            g.add(node)
        elif fn.op in ("call_function", "call_method"):
            try:
                if fn.op == "call_function":
                    tname, op = target_name(fn.target), None
                else:
                    tname, op = resolve_method(fn.target), "call_method"
            except TargetError as e:
                raise CaptureError(f"{where}: {e}") from None
            cat = op or category_of(tname)
            args = tuple(convert_arg(a, where) for a in fn.args)
            kwargs = {k: convert_arg(v, where) for k, v in fn.kwargs.items()}
            g.add(Node(fn.name, cat, args, kwargs, {"target": tname}, qt))
        elif fn.op == "output":
            structure, container = _fx_output(fn, where)
            attrs = {"container": container} if container else {}
            g.add(Node("out" if "out" not in g else g.fresh_name("out"), "output", (structure,), attrs=attrs, type=ANY))
    return g


def _fx_output(fn: torch.fx.Node, where: str):
    value = fn.args[0]
    if isinstance(value, torch.fx.Node):
        return Ref(value.name), None
    return convert_arg(value, where), None
