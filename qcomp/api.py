"""`qcomp.compile`: capture -> pass pipeline -> a callable compiled model."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .capture import capture_model
from .config import CompileConfig
from .pass_manager import PassContext, PassManager, format_pipeline, parse_pipeline
from .qir import Graph, print_graph


class QcompWarning(UserWarning):
    pass


class CompiledModel:
    """A compiled QIR graph with its runtime. Call it like the original model (positional tensor inputs)."""

    def __init__(self, graph: Graph, config: CompileConfig | None = None, report: dict | None = None, device=None,
                 runtime: str = "auto", cuda_graphs: bool = False):
        from qcomp.runtime.executor import make_runtime

        self.graph = graph
        self.config = config or CompileConfig()
        self.report = report or {}
        # auto: executor on CUDA, else reference; cuda_graphs: the executor records and replays CUDA graphs
        self._runtime = make_runtime(graph, device=device, runtime=runtime, cuda_graphs=cuda_graphs)

    def __call__(self, *inputs):
        return self._runtime.run(*inputs)

    def to(self, device=None, dtype=None) -> "CompiledModel":
        from qcomp.runtime.executor import move_runtime

        self._runtime = move_runtime(self._runtime, device, dtype)
        return self

    def graph_module(self, device=None, dtype=None):
        """The compiled graph as a torch.fx.GraphModule (qcomp.runtime.fx_lowering): no per-node Python at run
        time, and `torch.compile(compiled.graph_module("cuda"))` fuses the glue around the qlinear kernels.
        dtype=torch.bfloat16 (or float16) casts a graph captured in float32 as `compiled.to(dtype=...)` does: the
        qlinear kernels take fp16/bf16 activations only (float32 runs their reference path)."""
        from qcomp.runtime.fx_lowering import to_graph_module

        return to_graph_module(self.graph, device=device, dtype=dtype)

    def torch_compile(self, device=None, *, dtype=None, pdl: bool = True, combo: bool = True, **compile_kwargs):
        """torch.compile of graph_module(device, dtype) with inductor's PDL launches (`pdl`) and combo kernels
        (`combo`), the settings of the fastest measured decode step; `compile_kwargs` go to torch.compile. combo can
        change the rounding of some graphs: combo=False keeps the plain compile's numbers (qcomp.runtime.torch_compile)."""
        from qcomp.runtime.torch_compile import torch_compile_graph

        return torch_compile_graph(self.graph, device, dtype=dtype, pdl=pdl, combo=combo, **compile_kwargs)

    def save(self, path, tokenizer=None):
        """Write this model as an artifact directory (see qcomp.artifact); `qcomp.load(path)` reads it back."""
        from .artifact import save

        return save(self, path, tokenizer=tokenizer)

    @property
    def ir(self) -> str:
        return print_graph(self.graph)

    def layer_table(self) -> list[dict]:
        return list(self.report.get("layers", []))

    def summary(self) -> str:
        rows = self.layer_table()
        lines = [f"{'layer':<44} {'shape':>13} {'spec':>22} {'bits/w':>7} {'rel mse':>9}"]
        for r in rows:
            lines.append(f"{r['layer'][:44]:<44} {str(r['n']) + 'x' + str(r['k']):>13} {r['spec']:>22} "
                         f"{r['bits_per_weight']:>7.3f} {r['rel_mse']:>9.2e}")
        numel = sum(r["numel"] for r in rows)
        avg = sum(r["numel"] * r["bits_per_weight"] for r in rows) / numel if numel else float("nan")
        kept = self.report.get("kept_float", [])
        lines.append(f"{len(rows)} quantized layers, {numel:,} weights, average {avg:.3f} bits/weight "
                     f"(budget {self.config.budget}); kept float: {', '.join(kept) if kept else 'none'}")
        return "\n".join(lines)


def _check_finite(model: nn.Module) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"parameter {name!r} holds {bad} NaN/Inf value(s); fix or re-load the weights before compiling")


def _state_fingerprint(model: nn.Module) -> dict:
    return {k: (v.data_ptr(), v._version) for k, v in model.state_dict(keep_vars=True).items()}


def compile(model: nn.Module, budget: float = 4.0, example_inputs: Any = None, *, example_kwargs: dict | None = None,
            pipeline: str | None = None, dump_dir: str | Path | None = None, print_after_change=None,
            capture: str = "auto", progress: bool = False, **options) -> CompiledModel:
    """Compile `model` to an average of `budget` bits per weight over its quantized linear layers.

    example_inputs: a tensor or tuple of tensors the model accepts (Hugging Face models default to
    random token ids). pipeline: pass pipeline text (default: qcomp.config.DEFAULT_PIPELINE).
    dump_dir (or env QCOMP_DUMP_DIR): receives the IR after every pass, passes.json, reports.
    Extra options reach the passes through ctx.options. A model without linear layers compiles to its
    float graph, with a QcompWarning saying so. The user's model is never modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"qcomp.compile expects a torch.nn.Module, got {type(model).__name__}")
    config = CompileConfig(budget=budget, pipeline=pipeline or CompileConfig.pipeline, capture=capture)
    _check_finite(model)
    steps = parse_pipeline(config.pipeline)
    before = _state_fingerprint(model)
    was_training = model.training
    model.eval()
    if example_inputs is None:  # models with a known input kind (HF text models); else a clear CaptureError
        from .capture import default_example_inputs

        example_inputs, default_kwargs = default_example_inputs(model)
        example_kwargs = {**default_kwargs, **(example_kwargs or {})}
    try:
        graph = capture_model(model, example_inputs, example_kwargs, method=config.capture)
    finally:
        model.train(was_training)
    if _state_fingerprint(model) != before:
        raise RuntimeError("internal error: capture modified the model's state")
    if not any(n.op == "linear" for n in graph.nodes):
        warnings.warn(f"{type(model).__name__} has no linear layers: nothing to quantize, the compiled model computes "
                      "the float graph", QcompWarning, stacklevel=2)
    inputs = example_inputs if isinstance(example_inputs, tuple) else ((example_inputs,) if example_inputs is not None else ())
    ctx = PassContext(options={"budget": config.budget, "progress": progress, **options}, model=model, example_inputs=inputs)
    pm = PassManager(steps, dump_dir=dump_dir, print_after_change=print_after_change, progress=progress)
    out = pm.run(graph, ctx)
    report = dict(ctx.artifacts)
    report["passes"] = [{"name": r.name, "seconds": r.seconds, "changed": r.changed, "stats": r.stats} for r in pm.records]
    report["pipeline"] = format_pipeline(steps)
    return CompiledModel(out, config, report)
