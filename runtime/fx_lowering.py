"""A lowered QIR graph as a torch.fx.GraphModule, so that torch.compile can fuse the glue around qlinear.

    gm = to_graph_module(compiled.graph, device="cuda")
    step = torch.compile(gm)            # inductor fuses norms, rotary, residuals, casts into few kernels
    out = step(*inputs)                 # qlinear nodes stay torch.ops.qcomp.qlinear (Triton kernels on CUDA)

The module computes what the Executor computes, node for node (same ops, same targets): qlinear calls
the `qcomp::qlinear` op with the node's spec, shape and fused rotation; `rotate`, `norm`, `embedding` and
call-like nodes call the functions the reference runtime calls; parameters become buffers of the module
(moved to `device`). Unlike the Executor it has no per-node Python at run time, and it can be handed to
torch.compile (the qlinear op is opaque to it, with a fake implementation). The qlinear kernels run for
fp16/bf16 activations; float32 activations take the op's reference path. `dtype=` casts as the Executor's
`dtype` does: floating parameters (not the packed weights, scales, tables) and floating inputs to `dtype`,
and the floating arguments of linear, matmul and attention nodes, so a graph captured in float32 runs the
kernels in float16/bfloat16 (`to_graph_module(graph, "cuda", dtype=torch.bfloat16)`).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import fx, nn

from qcomp.capture.norms import rms_norm_reference
from qcomp.numerics.quant_spec import QuantSpec
from qcomp.qir import Graph
from qcomp.qir.graph import CALL_OPS
from qcomp.qir.targets import resolve_method

from .call_targets import runtime_callable
from .reference import resolve_args, rotate


def _attr_name(target: str, taken: set[str]) -> str:
    base = "p_" + re.sub(r"\W", "_", target)
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def qlinear_call(x, packed, scales, lut, offsets, bias, had_signs, bits: int, p: int, group_size: int, grid: str,
                 n: int, k: int, had_block: int, glu: bool = False, norm_weight=None, norm_eps: float = 0.0,
                 residual=None):
    """torch.ops.qcomp.qlinear (qlinear_fused for x = [gate | up], a norm or a residual) with a bias
    cast to x's dtype (as the Executor does)."""
    from qcomp.codegen.ops import call_op

    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    return call_op(x, packed, scales, lut, offsets, bias, had_signs, bits, p, group_size, grid, n, k, had_block, glu,
                   norm_weight, norm_eps, residual)


def cast_floating(v, dtype: torch.dtype):
    """v.to(dtype) for a floating tensor of another dtype, else v (the Executor's cast of one value)."""
    if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != dtype:
        return v.to(dtype)
    return v


def quantized_param_targets(graph: Graph) -> set[str]:
    """The param targets that qlinear nodes read as packed weights, scales, lookup tables or offsets: kept in their
    storage dtypes when the rest of the graph is cast."""
    return {graph.node(r).attrs["target"] for q in graph.find("qlinear") for r in q.args[1:5]
            if r is not None and graph.node(r).op == "param"}


def to_graph_module(graph: Graph, device=None, dtype: torch.dtype | None = None) -> fx.GraphModule:
    """The QIR `graph` as an fx GraphModule whose forward takes the graph's inputs (see the module docstring)."""
    from qcomp.codegen import ops  # noqa: F401  (registers torch.ops.qcomp.qlinear)
    from qcomp.codegen.hadamard_util import signs_for

    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype (e.g. torch.bfloat16), got {dtype!r}")
    dev = torch.device(device) if device is not None else None
    kept = quantized_param_targets(graph) if dtype is not None else set()
    root = nn.Module()
    fxg = fx.Graph()
    env: dict[str, fx.Node] = {}
    taken: set[str] = set()
    attrs: dict[tuple, fx.Node] = {}

    def buffer(key: tuple, tensor: torch.Tensor, label: str) -> fx.Node:
        node = attrs.get(key)
        if node is None:
            name = _attr_name(label, taken)
            root.register_buffer(name, tensor.to(dev) if dev is not None else tensor, persistent=False)
            node = attrs[key] = fxg.get_attr(name)
        return node

    def cast(v):  # a floating fx value to dtype, as the Executor's _cast
        if isinstance(v, fx.Node):
            return fxg.call_function(cast_floating, (v, dtype))
        if isinstance(v, (list, tuple)):
            return type(v)(cast(x) for x in v)
        return v

    for inp in sorted(graph.inputs, key=lambda nd: nd.attrs["index"]):
        env[inp.name] = fxg.placeholder(re.sub(r"\W", "_", inp.name))
        if dtype is not None:
            env[inp.name] = cast(env[inp.name])
    for node in graph.nodes:
        op, a = node.op, node.attrs
        if op == "input":
            continue
        if op == "param":
            t = graph.params[a["target"]]
            if dtype is not None and a["target"] not in kept:
                t = cast_floating(t, dtype)
            env[node.name] = buffer(("param", a["target"]), t, a["target"])
            continue
        args, kwargs = resolve_args(node.args, env, dev), resolve_args(node.kwargs, env, dev)
        if dtype is not None and op in ("linear", "matmul", "attention"):
            args, kwargs = [cast(v) for v in args], {k: cast(v) for k, v in kwargs.items()}
        if op == "linear":
            out = fxg.call_function(F.linear, tuple(args))
        elif op == "qlinear":
            spec = QuantSpec.from_dict(a["spec"])
            rot = a.get("rotate") or {}
            had = int(rot.get("size") or 0)
            signs = buffer(("signs", had, rot.get("seed")), signs_for(had, rot.get("seed")), f"had_signs_{had}") \
                if had else None
            x, packed, scales, lut = args[:4]
            offsets = args[4] if len(args) > 4 else None
            bias = args[5] if len(args) > 5 else None
            norm_w, res = (args[6], args[7]) if len(args) > 7 else (None, None)
            if lut is None:
                lut = buffer(("lut0", spec.bits * spec.p, spec.p), torch.zeros(2 ** (spec.bits * spec.p), spec.p),
                             f"lut_zeros_{spec.bits * spec.p}_{spec.p}")
            out = fxg.call_function(qlinear_call, (x, packed, scales, lut, offsets, bias, signs, spec.bits, spec.p,
                                                   spec.group(a["k"]), spec.grid, a["n"], a["k"], had,
                                                   bool(a.get("glu")), norm_w, (a.get("norm") or {}).get("eps", 0.0),
                                                   res))
        elif op == "rotate":
            out = fxg.call_function(rotate, (args[0], a["size"], a.get("seed"), a.get("inverse", False)))
        elif op == "norm":
            x, w, b = (list(args) + [None, None])[:3]
            out = (fxg.call_function(rms_norm_reference, (x, w, a["eps"])) if a["kind"] == "rms" else
                   fxg.call_function(F.layer_norm, (x, a["shape"], w, b, a["eps"])))
        elif op == "embedding":
            out = fxg.call_function(F.embedding, (args[1], args[0]))
        elif op == "call_method":
            out = fxg.call_method(resolve_method(a["target"]), tuple(args), kwargs)
        elif op in CALL_OPS:
            out = fxg.call_function(runtime_callable(a["target"]), tuple(args), kwargs)
        elif op == "output":
            fxg.output(args[0])
            continue
        else:
            raise ValueError(f"to_graph_module: node %{node.name} has op {op!r}, which has no fx lowering")
        env[node.name] = out
    fxg.lint()
    return fx.GraphModule(root, fxg, class_name=f"QIR_{re.sub(r'[^0-9A-Za-z_]', '_', graph.name or 'graph')}")
