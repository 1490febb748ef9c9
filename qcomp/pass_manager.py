"""Pass registry, textual pipelines and the pass manager with its instruments.

A pass is a function `fn(graph, ctx, **options) -> Graph | (Graph, stats)` registered under a name:

    @register_pass("canonicalize")
    def canonicalize(graph, ctx): ...

Pipelines are text: "canonicalize,insert-hadamard,allocate-bits(budget=3.5),quantize". Between passes the
verifier runs; instruments dump `NN_<pass>.qir` and `passes.json`, print the IR after a pass that changed
it, and on a failure write `reproducer.qir` (+ `reproducer.safetensors`) that `python -m qcomp opt` replays.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from .qir import Graph, Node, print_graph
from .qir.parser import QIRParseError, _Cursor
from .qir.verifier import verify


@dataclass
class PassInfo:
    name: str
    fn: Callable
    doc: str


PASSES: dict[str, PassInfo] = {}


def register_pass(name: str):
    def deco(fn):
        if name in PASSES and PASSES[name].fn is not fn:
            raise ValueError(f"pass {name!r} is registered twice")
        PASSES[name] = PassInfo(name, fn, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def _load_builtin_passes() -> None:
    import qcomp.passes  # noqa: F401  (registers every pass module)


class PipelineError(ValueError):
    pass


class NodeError(RuntimeError):
    """Raised by a pass about one node."""

    def __init__(self, node: Node | str, msg: str):
        self.node = node.name if isinstance(node, Node) else node
        super().__init__(f"at %{self.node}: {msg}")


class PassError(RuntimeError):
    def __init__(self, pass_name: str, cause: BaseException, reproducer: Path | None):
        self.pass_name, self.cause, self.reproducer = pass_name, cause, reproducer
        where = f" at %{cause.node}" if isinstance(cause, NodeError) else ""
        rep = f"\nreproducer: {reproducer} (replay: python -m qcomp opt {reproducer})" if reproducer else ""
        super().__init__(f"pass {pass_name!r} failed{where}: {type(cause).__name__}: {cause}{rep}")


def parse_pipeline(text: str) -> list[tuple[str, dict]]:
    """'a,b(k=1, s="x"),c' -> [("a", {}), ("b", {"k": 1, "s": "x"}), ("c", {})]."""
    _load_builtin_passes()
    cur = _Cursor(text, 1)
    out = []
    while not cur.at_end():
        name = cur.match(__import__("re").compile(r"[A-Za-z_][A-Za-z0-9_-]*"), "a pass name")
        opts: dict[str, Any] = {}
        if cur.peek("("):
            args, kwargs = cur.call_args()
            if args:
                raise PipelineError(f"pass {name!r}: options must be key=value, got positional {args}")
            opts = kwargs
        if name not in PASSES:
            raise PipelineError(f"unknown pass {name!r} in pipeline {text!r}; known passes: {', '.join(sorted(PASSES))}")
        out.append((name, opts))
        if not cur.eat(","):
            if not cur.at_end():
                raise PipelineError(f"expected ',' between passes at column {cur.pos + 1} of {text!r}")
    return out


def format_pipeline(steps: list[tuple[str, dict]]) -> str:
    from .qir.printer import format_value

    return ",".join(name + (f"({', '.join(f'{k}={format_value(v)}' for k, v in o.items())})" if o else "") for name, o in steps)


def set_pass_options(pipeline: str, name: str, **options) -> str:
    """`pipeline` with `options` added to (or replacing those of) every `name` step; PipelineError if it has none."""
    steps = parse_pipeline(pipeline)
    if not any(n == name for n, _ in steps):
        raise PipelineError(f"pipeline {pipeline!r} has no {name!r} step to give {sorted(options)}")
    return format_pipeline([(n, {**o, **options} if n == name else o) for n, o in steps])


LM_HEAD_PASSES = ("insert-hadamard", "allocate-bits", "quantize")  # the passes whose default skip is "lm_head"


def with_lm_head_quantized(pipeline: str) -> str:
    """`pipeline` with the lm_head rotated, allocated (its bits chosen by the DP and counted in the budget) and
    quantized like every other linear: skip="" on the LM_HEAD_PASSES. PipelineError if one of them is missing."""
    missing = sorted(set(LM_HEAD_PASSES) - {n for n, _ in parse_pipeline(pipeline)})
    if missing:
        raise PipelineError(f"quantizing the lm_head needs {missing} steps in the pipeline {pipeline!r}")
    for name in LM_HEAD_PASSES:
        pipeline = set_pass_options(pipeline, name, skip="")
    return pipeline


@dataclass
class PassContext:
    """What passes may read besides the graph: compile options, the source model, example inputs."""

    options: dict = field(default_factory=dict)
    model: Any = None
    example_inputs: tuple = ()
    dump_dir: Path | None = None
    artifacts: dict = field(default_factory=dict)  # passes leave reports here (e.g. per-layer bits)


@dataclass
class PassRecord:
    index: int
    name: str
    options: dict
    seconds: float
    changed: bool
    stats: dict


class PassManager:
    def __init__(self, pipeline: str | list, dump_dir: str | os.PathLike | None = None, print_after_change: TextIO | None = None,
                 verify_each: bool = True, progress: bool = False):
        self.steps = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
        self.pipeline_text = format_pipeline(self.steps)
        env_dir = os.environ.get("QCOMP_DUMP_DIR")
        self.dump_dir = Path(dump_dir) if dump_dir else (Path(env_dir) if env_dir else None)
        self.print_after_change = print_after_change
        self.verify_each = verify_each
        self.progress = progress
        self.records: list[PassRecord] = []

    def _dump(self, name: str, text: str) -> None:
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / name).write_text(text)

    def run(self, graph: Graph, ctx: PassContext | None = None) -> Graph:
        ctx = ctx or PassContext()
        ctx.dump_dir = self.dump_dir
        if self.verify_each:
            verify(graph)
        before = print_graph(graph)
        self._dump("00_captured.qir", before)
        steps = self.steps
        if self.progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="qcomp passes", unit="pass")
        for i, (name, opts) in enumerate(steps, start=1):
            info = PASSES[name]
            t0 = time.perf_counter()
            try:
                result = info.fn(graph, ctx, **opts)
                new, stats = result if isinstance(result, tuple) else (result, {})
                if self.verify_each:
                    verify(new)
            except Exception as e:
                rep = self._write_reproducer(graph, name, opts, i, e)
                self._write_records()
                raise PassError(name, e, rep) from e
            seconds = time.perf_counter() - t0
            after = print_graph(new)
            changed = after != before or new.params.keys() != graph.params.keys() or any(
                new.params[k] is not graph.params.get(k) for k in new.params)
            self.records.append(PassRecord(i, name, opts, seconds, changed, stats))
            self._dump(f"{i:02d}_{name}.qir", after)
            if changed and self.print_after_change is not None:
                print(f"// ----- IR after {name} -----\n{after}", file=self.print_after_change)
            graph, before = new, after
        self._write_records()
        return graph

    def _write_records(self) -> None:
        if self.dump_dir is None:
            return
        data = {"pipeline": self.pipeline_text, "passes": [
            {"index": r.index, "name": r.name, "options": r.options, "seconds": round(r.seconds, 6), "changed": r.changed,
             "stats": r.stats} for r in self.records]}
        self._dump("passes.json", json.dumps(data, indent=2, default=str) + "\n")
        from .report_html import write_report  # report.html for this dump directory; never raises

        write_report(self.dump_dir)

    def _write_reproducer(self, graph: Graph, name: str, opts: dict, index: int, err: BaseException) -> Path | None:
        target = self.dump_dir or Path(os.environ.get("TMPDIR", "/tmp")) / f"qcomp-reproducer-{os.getpid()}"
        try:
            from .artifact_io import save_params

            target.mkdir(parents=True, exist_ok=True)
            pipeline = format_pipeline(self.steps[index - 1:])
            header = [f"# qcomp reproducer: pass {name!r} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                      f"# pipeline: {pipeline}", "# params: reproducer.safetensors",
                      f'# replay: python -m qcomp opt {target / "reproducer.qir"} --pipeline "{pipeline}"']
            save_params(graph.params, target / "reproducer.safetensors")
            (target / "reproducer.qir").write_text("\n".join(header) + "\n" + print_graph(graph))
            return target / "reproducer.qir"
        except Exception:  # never mask the pass failure itself
            traceback.print_exc(file=sys.stderr)
            return None


def read_reproducer(path: str | os.PathLike) -> tuple[Graph, str | None]:
    """Graph (with params, if the sibling safetensors exists) and pipeline of a reproducer file."""
    from .artifact_io import load_params
    from .qir import parse_graph

    path = Path(path)
    text = path.read_text()
    pipeline = None
    params_file = None
    for line in text.splitlines():
        if line.startswith("# pipeline:"):
            pipeline = line.split(":", 1)[1].strip()
        elif line.startswith("# params:"):
            params_file = path.parent / line.split(":", 1)[1].strip()
    g = parse_graph(text)
    if params_file is not None and params_file.exists():
        g.params = load_params(params_file)
    return g, pipeline


__all__ = ["NodeError", "PASSES", "PassContext", "PassError", "PassManager", "PipelineError", "QIRParseError",
           "format_pipeline", "parse_pipeline", "read_reproducer", "register_pass", "set_pass_options"]
