"""The reference runtime: executes any QIR graph with plain torch, on CPU or GPU.

It defines what a compiled graph computes: qlinear = dequantize (unpack codes, apply the QuantSpec
formula) then matmul; rotate = block Hadamard; norm = the RMSNorm/LayerNorm formula; call-like ops
call their target. Device constants baked in at capture (e.g. device("cpu")) are replaced by the
runtime's device, so a graph captured on CPU runs on GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qcomp.capture.norms import rms_norm_reference
from qcomp.numerics.quant_spec import QuantSpec
from qcomp.qir import Graph, Node, Ref
from qcomp.qir.graph import CALL_OPS
from qcomp.qir.targets import resolve_method, resolve_target

from .dequant import dequantize_packed


class RuntimeError_(RuntimeError):
    pass


class ModelOutputDict(dict):
    """Dict with attribute access, returned for models whose output was a ModelOutput (e.g. `.logits`)."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None

    def to_tuple(self):
        return tuple(self.values())


def resolve_args(v, env: dict, device: torch.device | None = None):
    """A node argument with every Ref replaced by env[name] (nested lists, tuples, dicts and slices rebuilt) and
    device constants baked in at capture replaced by `device` (when given)."""
    if isinstance(v, Ref):
        return env[v.name]
    if isinstance(v, list):
        return [resolve_args(x, env, device) for x in v]
    if isinstance(v, tuple):
        return tuple(resolve_args(x, env, device) for x in v)
    if isinstance(v, dict):
        return {k: resolve_args(x, env, device) for k, x in v.items()}
    if isinstance(v, slice):
        return slice(resolve_args(v.start, env, device), resolve_args(v.stop, env, device),
                     resolve_args(v.step, env, device))
    if isinstance(v, torch.device) and device is not None:
        return device
    return v


def fused_input(node: Node, x: torch.Tensor, norm_weight: torch.Tensor | None) -> torch.Tensor:
    """A qlinear's input with the ops fused into its node applied as the unfused graph computes them, in x's dtype:
    silu(gate) * up of x = [gate | up] (attr glu, passes/fuse_glu.py) or the RMSNorm (attr norm,
    passes/fuse_norm.py)."""
    if node.attrs.get("glu"):
        from qcomp.codegen.ops import glu_reference

        return glu_reference(x)
    if norm_weight is not None:
        return rms_norm_reference(x, norm_weight, node.attrs["norm"]["eps"])
    return x


def rotate(x: torch.Tensor, size: int, seed, inverse: bool = False) -> torch.Tensor:
    from qcomp.numerics.hadamard import hadamard_transform

    return hadamard_transform(x, size, seed=seed, inverse=inverse)


class ReferenceRuntime:
    """Interpret `graph`. Override `qlinear` in a subclass to run kernels instead of dequantize+matmul."""

    def __init__(self, graph: Graph, device: torch.device | str | None = None, cache_dequantized: bool = True):
        self.graph = graph
        self.device = torch.device(device) if device is not None else None
        self.cache_dequantized = cache_dequantized  # keep each qlinear's float weight after its first use
        self._dequantized: dict[str, torch.Tensor] = {}
        self._params: dict[str, torch.Tensor] = {}
        self._fns: dict[str, object] = {}
        self._last_use = self._compute_last_use()
        # node name -> fn(value), called with the node's value right after it is computed (e.g. to collect
        # statistics of a linear's inputs for GPTQ); empty by default
        self.value_hooks: dict[str, object] = {}

    def _compute_last_use(self) -> dict[int, list[str]]:
        last: dict[str, int] = {}
        for i, n in enumerate(self.graph.nodes):
            for r in n.refs():
                last[r.name] = i
        drop: dict[int, list[str]] = {}
        for name, i in last.items():
            drop.setdefault(i, []).append(name)
        return drop

    def param(self, target: str) -> torch.Tensor:
        t = self._params.get(target)
        if t is None:
            t = self._params[target] = self.prepare_param(target, self.graph.params[target])
        return t

    def prepare_param(self, target: str, t: torch.Tensor) -> torch.Tensor:
        """A stored parameter as this runtime uses it (moved to its device; subclasses may cast)."""
        return t.to(self.device) if self.device is not None else t

    def to(self, device) -> "ReferenceRuntime":
        self.device = torch.device(device)
        self._params.clear()
        self._dequantized.clear()
        return self

    # -- execution ------------------------------------------------------------------------
    def __call__(self, *inputs):
        return self.run(*inputs)

    def run(self, *inputs):
        g = self.graph
        env: dict[str, object] = {}
        n_in = len(g.inputs)
        if len(inputs) != n_in:
            raise TypeError(f"graph {g.name!r} takes {n_in} inputs, got {len(inputs)}")
        result = None
        with torch.no_grad():
            for i, node in enumerate(g.nodes):
                try:
                    value = self.eval_node(node, env, inputs)
                except Exception as e:
                    raise RuntimeError_(f"executing %{node.name} ({node.op} {node.attrs.get('target') or node.attrs.get('layer') or ''}): {type(e).__name__}: {e}") from e
                if node.op == "output":
                    result = value
                else:
                    env[node.name] = value
                    hook = self.value_hooks.get(node.name)
                    if hook is not None:
                        hook(value)
                for name in self._last_use.get(i, ()):
                    env.pop(name, None)
        return result

    def _val(self, v, env):
        return resolve_args(v, env, self.device)

    def eval_node(self, node: Node, env: dict, inputs: tuple):
        op, a = node.op, node.attrs
        if op == "input":
            x = inputs[a["index"]]
            return x.to(self.device) if self.device is not None and isinstance(x, torch.Tensor) else x
        if op == "param":
            return self.param(a["target"])
        args = self._val(node.args, env)
        kwargs = self._val(node.kwargs, env)
        if op == "linear":
            return F.linear(args[0], args[1], args[2] if len(args) > 2 else None)
        if op == "qlinear":
            return self.qlinear(node, *args)
        if op == "rotate":
            return rotate(args[0], a["size"], a.get("seed"), a.get("inverse", False))
        if op == "norm":
            x, w, b = (list(args) + [None, None])[:3]
            if a["kind"] == "rms":
                return rms_norm_reference(x, w, a["eps"])
            return F.layer_norm(x, a["shape"], w, b, a["eps"])
        if op == "embedding":
            return F.embedding(args[1], args[0])
        if op == "call_method":
            return getattr(args[0], resolve_method(a["target"]))(*args[1:], **kwargs)
        if op in CALL_OPS:
            fn = self._fns.get(a["target"])
            if fn is None:
                fn = self._fns[a["target"]] = resolve_target(a["target"])
            return fn(*args, **kwargs)
        if op == "output":
            out = args[0]
            return ModelOutputDict(out) if a.get("container") == "ModelOutput" and isinstance(out, dict) else out
        raise RuntimeError_(f"unknown op {op!r}")

    def qlinear(self, node: Node, x, packed, scales, lut, offsets=None, bias=None, norm_weight=None, residual=None):
        y = self.qlinear_core(node, fused_input(node, x, norm_weight), packed, scales, lut, offsets, bias)
        return y if residual is None else residual + y  # passes/fuse_residual.py: the add it took, in x's dtype

    def qlinear_core(self, node: Node, x, packed, scales, lut, offsets=None, bias=None):
        """The layer on its (glu / norm applied) input, before the residual."""
        a = node.attrs
        spec = QuantSpec.from_dict(a["spec"])
        if a.get("rotate"):
            x = rotate(x, a["rotate"]["size"], a["rotate"].get("seed"))
        w = self._dequantized.get(node.name)
        if w is None or w.dtype != x.dtype or w.device != x.device:
            w = dequantize_packed(packed, scales, lut, offsets, spec, a["n"], a["k"], dtype=torch.float32).to(x.dtype)
            if self.cache_dequantized:
                self._dequantized[node.name] = w
        return F.linear(x, w, bias)
