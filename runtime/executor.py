"""The GPU runtime: the reference interpreter with qlinear nodes running the generated kernels.

`Executor` is a ReferenceRuntime whose `qlinear` calls `qcomp.codegen.ops.qlinear` (the
`torch.ops.qcomp.qlinear` op: Triton kernels for fp16/bf16 activations on CUDA) and keeps the
reference (dequantize + matmul) where no kernel applies — CPU tensors, float32 activations, or no
importable codegen op — saying so once per reason with a QcompWarning.

* Dynamic shapes: nothing is specialized to the capture's example shapes; any batch and sequence
  length the graph accepts runs (CUDA graphs, when on, are recorded once per input signature).
* `.to(device=None, dtype=None)`: parameters move to `device`; with `dtype` (e.g. torch.float16) the
  float parameters and float inputs are cast, while packed codes, scales and lookup tables keep their
  storage dtypes. Linear, qlinear, matmul and attention nodes cast their floating inputs to the runtime
  dtype, so graphs that compute something in float32 on purpose (rotary tables, norms) still run.
* Attention nodes (torch's scaled_dot_product_attention) run as torch.ops.qcomp.attention: a Triton
  flash-decoding kernel for decode shapes on CUDA, torch's attention otherwise (runtime/call_targets.py).
* `cuda_graphs=True`: for each distinct input signature (shapes, dtypes, devices), the first call runs
  eagerly (which also autotunes the kernels), the second records a torch.cuda.CUDAGraph, and later calls
  copy the inputs into its static buffers and replay it. Outputs are cloned, so they stay valid.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from qcomp.numerics.quant_spec import QuantSpec
from qcomp.qir import Graph, Node

from .fx_lowering import cast_floating, quantized_param_targets
from .reference import ReferenceRuntime

RUNTIMES = ("auto", "executor", "reference")
_KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def make_runtime(graph: Graph, device=None, runtime: str = "auto", dtype=None, cuda_graphs: bool = False):
    """The runtime for `graph`: "auto" picks the Executor when CUDA is usable, else the ReferenceRuntime."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "auto":
        on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
        runtime = "executor" if on_cuda or dtype is not None or cuda_graphs else "reference"
    if runtime == "reference":
        if dtype is not None or cuda_graphs:
            raise ValueError("dtype and cuda_graphs need runtime='executor' (the reference runs the graph as captured)")
        return ReferenceRuntime(graph, device=device)
    return Executor(graph, device=device, dtype=dtype, cuda_graphs=cuda_graphs)


def move_runtime(rt: ReferenceRuntime, device=None, dtype=None) -> ReferenceRuntime:
    """`rt` moved to `device` and/or cast to `dtype` (a reference runtime becomes an Executor to cast dtypes)."""
    if dtype is not None and not isinstance(rt, Executor):
        rt = Executor(rt.graph, device=rt.device)
    if isinstance(rt, Executor):
        return rt.to(device, dtype)
    return rt.to(device) if device is not None else rt


class Executor(ReferenceRuntime):
    """Runs a lowered QIR graph with the qcomp::qlinear kernels on CUDA (see the module docstring)."""

    def __init__(self, graph: Graph, device=None, dtype: torch.dtype | None = None, cuda_graphs: bool = False,
                 max_graphs: int = 8):
        super().__init__(graph, device=device)
        self.dtype = dtype
        self.cuda_graphs = cuda_graphs
        self.max_graphs = max_graphs
        self.fallbacks: set[str] = set()  # reasons the reference ran instead of a kernel (each warned once)
        self._specs: dict[str, QuantSpec] = {}
        self._signs: dict[tuple, torch.Tensor] = {}
        self._graphs: dict[tuple, object] = {}
        self._seen: set[tuple] = set()
        self._op = None
        self._quant_targets = quantized_param_targets(graph)

    # -- placement --------------------------------------------------------------------------------
    def to(self, device=None, dtype: torch.dtype | None = None) -> "Executor":
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            if not dtype.is_floating_point:
                raise ValueError(f"dtype must be a floating dtype (e.g. torch.float16), got {dtype}")
            self.dtype = dtype
        self._params.clear()
        self._graphs.clear()
        self._seen.clear()
        return self

    def prepare_param(self, target: str, t: torch.Tensor) -> torch.Tensor:
        t = super().prepare_param(target, t)
        if self.dtype is not None and t.is_floating_point() and target not in self._quant_targets:
            t = t.to(self.dtype)
        return t

    def _cast(self, v):
        return v if self.dtype is None else cast_floating(v, self.dtype)

    def eval_node(self, node: Node, env: dict, inputs: tuple):
        if node.op == "input" and self.dtype is not None:
            return self._cast(super().eval_node(node, env, inputs))
        # attention always runs through runtime_callable (qcomp's op); _cast is the identity without a dtype
        if node.op == "attention" or (self.dtype is not None and node.op in ("linear", "matmul")):
            args = tuple(self._cast(a) for a in self._val(node.args, env))
            kwargs = {k: self._cast(v) for k, v in self._val(node.kwargs, env).items()}
            if node.op == "linear":
                return F.linear(args[0], args[1], args[2] if len(args) > 2 else None)
            return self._call(node, args, kwargs)
        return super().eval_node(node, env, inputs)

    def _call(self, node: Node, args, kwargs):
        from .call_targets import runtime_callable

        fn = self._fns.get(node.attrs["target"])
        if fn is None:
            fn = self._fns[node.attrs["target"]] = runtime_callable(node.attrs["target"])
        return fn(*args, **kwargs)

    # -- qlinear ----------------------------------------------------------------------------------
    def kernel_unavailable(self, x: torch.Tensor) -> str | None:
        """Why the kernel cannot run for activation `x` (None: it can)."""
        if x.device.type != "cuda":
            return f"inputs are on {x.device.type}, the qlinear kernels need CUDA"
        if x.dtype not in _KERNEL_DTYPES:
            return (f"activations are {x.dtype}, the kernels take float16/bfloat16; "
                    "use compiled.to(dtype=torch.float16) to run them")
        if self._kernel_op() is None:
            return "qcomp.codegen.ops cannot be imported (is triton installed?)"
        return None

    def _kernel_op(self):
        if self._op is None:
            try:
                from qcomp.codegen.ops import qlinear
            except Exception:  # ImportError, or triton failing to initialise
                self._op = False
            else:
                self._op = qlinear
        return self._op or None

    def _fallback(self, reason: str) -> None:
        if reason not in self.fallbacks:
            self.fallbacks.add(reason)
            from qcomp.api import QcompWarning

            warnings.warn(f"qcomp executor: running qlinear with the reference (dequantize + matmul): {reason}",
                          QcompWarning, stacklevel=4)

    def qlinear(self, node: Node, x, packed, scales, lut, offsets=None, bias=None, norm_weight=None, residual=None):
        x, norm_weight, residual = self._cast(x), self._cast(norm_weight), self._cast(residual)
        if bias is not None and bias.is_floating_point() and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        reason = self.kernel_unavailable(x)
        if reason is None:
            return self.kernel_qlinear(node, x, packed, scales, lut, offsets, bias, norm_weight, residual)
        self._fallback(reason)
        return super().qlinear(node, x, packed, scales, lut, offsets, bias, norm_weight, residual)

    def qlinear_core(self, node: Node, x, packed, scales, lut, offsets=None, bias=None):
        """The reference layer (glu / norm applied, residual not yet added) where x is: the base class's on the CPU,
        device_reference_qlinear elsewhere."""
        if x.device.type == "cpu":
            return super().qlinear_core(node, x, packed, scales, lut, offsets, bias)
        return self.device_reference_qlinear(node, x, packed, scales, lut, offsets, bias)

    def device_reference_qlinear(self, node: Node, x, packed, scales, lut, offsets=None, bias=None):
        """Dequantize + matmul with every tensor on x's device (the QuantSpec formula, as the reference), on the
        layer's input with glu / norm already applied (fused_input)."""
        from qcomp.codegen.hadamard_util import rotate_blocks
        from qcomp.codegen.ops import reference_weight

        a, spec = node.attrs, self._spec(node)
        w = reference_weight(packed, scales.to(packed.device), lut.to(packed.device),
                             None if offsets is None else offsets.to(packed.device), spec.bits, spec.p,
                             spec.group_size, spec.grid, a["n"], a["k"]).to(device=x.device, dtype=x.dtype)
        rot = a.get("rotate") or {}
        if rot.get("size"):
            x = rotate_blocks(x, self._had_signs(rot["size"], rot.get("seed"), x.device), rot["size"])
        return F.linear(x, w, bias)

    def _spec(self, node: Node) -> QuantSpec:
        spec = self._specs.get(node.name)
        if spec is None:
            spec = self._specs[node.name] = QuantSpec.from_dict(node.attrs["spec"])
        return spec

    def kernel_qlinear(self, node: Node, x, packed, scales, lut, offsets=None, bias=None, norm_weight=None,
                       residual=None):
        """The codegen op with this node's attributes (spec, n, k, rotate, glu, norm) and fused inputs."""
        a, spec = node.attrs, self._spec(node)
        rot = a.get("rotate") or {}
        had_block = int(rot.get("size") or 0)
        signs = self._had_signs(had_block, rot.get("seed"), x.device) if had_block else None
        return self._kernel_op()(x, packed, scales, lut, offsets, bias, bits=spec.bits, p=spec.p,
                                 group_size=spec.group(a["k"]), grid=spec.grid, n=a["n"], k=a["k"],
                                 had_block=had_block, had_signs=signs, glu=bool(a.get("glu")),
                                 norm_weight=norm_weight, norm_eps=(a.get("norm") or {}).get("eps"), residual=residual)

    def _had_signs(self, size: int, seed, device) -> torch.Tensor:
        key = (size, seed, str(device))
        s = self._signs.get(key)
        if s is None:
            from qcomp.codegen.hadamard_util import signs_for

            s = self._signs[key] = signs_for(size, seed).to(device=device, dtype=torch.float32)
        return s

    def precompile(self, *inputs, workers: int | None = None) -> dict:
        """Compile every autotuning candidate of the kernels that `inputs` will run, in `workers` processes
        (qcomp.codegen.precompile), so that the first real call only times them. One reference pass over the
        graph finds the calls (shapes, dtypes); returns {"calls", "jobs", "compiled", "workers", "seconds"}."""
        from qcomp.codegen import precompile as pc

        with pc.recording() as calls:
            ReferenceRuntime.run(self, *inputs)
        if not calls:
            return {"calls": 0, "jobs": 0, "compiled": 0, "workers": 0, "seconds": 0.0}
        dev = next(t.device for t in inputs if isinstance(t, torch.Tensor)) if self.device is None else self.device
        return {"calls": len(calls), **pc.precompile(calls, dev, workers)}

    # -- CUDA graphs ------------------------------------------------------------------------------
    @staticmethod
    def signature(inputs: tuple) -> tuple:
        """What a recorded CUDA graph is specialized to: each input's shape, dtype and device (or value)."""
        return tuple((tuple(x.shape), x.dtype, str(x.device)) if isinstance(x, torch.Tensor) else ("const", repr(x))
                     for x in inputs)

    def can_capture(self, inputs: tuple) -> bool:
        tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
        return self.cuda_graphs and bool(tensors) and all(x.device.type == "cuda" for x in tensors) and (
            self.device is None or self.device.type == "cuda")

    def run(self, *inputs):
        if not self.can_capture(inputs):
            return super().run(*inputs)
        key = self.signature(inputs)
        rec = self._graphs.get(key)
        if rec is None:
            if key not in self._seen or len(self._graphs) >= self.max_graphs:
                self._seen.add(key)  # first call: eager (compiles and autotunes the kernels)
                return super().run(*inputs)
            rec = self._graphs[key] = self._record(inputs)
        static_in, graph, static_out = rec
        for dst, src in zip(static_in, inputs):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        graph.replay()
        return _clone_outputs(static_out)

    def _record(self, inputs: tuple):
        static_in = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            super().run(*static_in)  # warm-up on a side stream, as torch.cuda.graphs recommends
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = super().run(*static_in)
        return static_in, graph, static_out


def _clone_outputs(v):
    """A copy of a (nested) output whose tensors no longer alias the CUDA graph's static buffers."""
    if isinstance(v, torch.Tensor):
        return v.clone()
    if isinstance(v, dict):
        return type(v)({k: _clone_outputs(x) for k, x in v.items()})
    if isinstance(v, (list, tuple)):
        return type(v)(_clone_outputs(x) for x in v)
    return v
