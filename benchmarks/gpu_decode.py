"""Decode speed of a Llama-3-8B-architecture model (random weights): qcomp at several budgets vs bf16.

    python benchmarks/gpu_decode.py [--config llama3-8b] [--budgets 4.0,3.5,3.0,2.5] [--batches 1,16] [--out DIR]

Both sides run the same static-shape decoder step (qcomp.static_decode.StaticDecodeStep: one token,
KV cache of --max-len positions) captured once as a CUDA graph and replayed; a step's time is the
median over replays (CUDA events), tokens/s = batch / step time. bf16: the step in eager PyTorch
(cuBLAS) under a CUDA graph — the strong baseline. qcomp: `qcomp.compile(step, budget=B)` with the
default pipeline (rotations, DP allocation with calibrated sensitivity on the example step, quantize,
lower), run by the Executor (Triton qlinear kernels), whose CUDA graph is replayed the same way.
Compile time is reported per budget (capture + passes; the sensitivity is measured once and cached).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from qcomp.runtime.torch_compile import inductor_options

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_env import environment  # noqa: E402  (re-exported: gpu_decode.environment)

CONFIGS = {
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048),
    "tiny": dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512),
}


# Decode-speed pipeline: qcomp's default passes with two deployment choices, stated in RESULTS.md:
# Hadamard blocks of 128 (fused into the GEMV; the default's 1024-wide blocks on K = 4096 would be separate
# rotate kernels) and rotated *uniform* grids (QuEST-style; arithmetic dequant) instead of Gaussian lookup
# tables, whose per-weight gather is ~2.7x slower in the current kernels (benchmarks/RESULTS_kernels.md);
# no GPTQ: the calibration input is one decode token (random weights, a speed test). fuse-cache-attention (as in the
# default pipeline) lets attention read this step's key/value row instead of a copy of each layer's cache.
# Siblings (q/k/v, gate/up) share one allocation choice and run as one kernel (fuse-siblings: 7 -> 4 qlinear
# launches per layer). Not in it: fuse-glu (the down projection's kernel applies silu(gate) * up as it loads x, one
# launch less per layer): H200, session 16, the glu kernels ran 0.5-1.3 µs slower per call and the step did not get
# faster (3.146 ms against 3.114 without it, different runs; add ",fuse-glu" to --pipeline to try it).
# "speed-fused" adds fuse-residual and fuse-norm (session 18): the residual add after the o and down projections
# moves into their kernels' epilogue and each RMSNorm into the next qkv / gate_up GEMV, which reads the whole row for
# its mean square: two glue launches fewer per layer, the same function (passes/fuse_norm.py). H200, session 18,
# three runs: the Executor 3.68-3.89 ms against 4.55-4.58 without them, but under torch.compile 3.105 ms in one run
# and 3.29-3.31 in two (3.15-3.17 without); RESULTS.md. Not the default until that spread is understood.
# UNFUSED_PIPELINE is the pipeline of the session-11/12 tables.
UNFUSED_PIPELINE = ('canonicalize,insert-hadamard(max_block=128),fuse-hadamard(residual=False),'
                    'allocate-bits(family="uniform", group_sizes=[128], bits=[2,3,4,5,6,8]),quantize(gptq=False),lower')
SPEED_PIPELINE = ('canonicalize,fuse-cache-attention,insert-hadamard(max_block=128),fuse-hadamard(residual=False),'
                  'allocate-bits(family="uniform", group_sizes=[128], bits=[2,3,4,5,6,8], tie_siblings=True),'
                  'quantize(gptq=False),fuse-siblings,lower')
PIPELINES = {"speed": SPEED_PIPELINE, "speed-fused": SPEED_PIPELINE + ",fuse-residual,fuse-norm",
             "unfused": UNFUSED_PIPELINE}


def with_sensitivity_file(pipeline: str, path: str | None) -> str:
    """The pipeline with allocate-bits(sensitivity_file=path) added (unchanged when path is None)."""
    from qcomp.pass_manager import PipelineError, set_pass_options

    if path is None:
        return pipeline
    try:
        return set_pass_options(pipeline, "allocate-bits", sensitivity_file=str(path))
    except PipelineError as e:
        raise SystemExit(f"--sensitivity-file needs a --pipeline with an allocate-bits step, e.g. this script's "
                         f"default: {e}") from None


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float32."""
    return ((a.float() - ref.float()).norm() / ref.float().norm()).item()


def build_model(name: str, device: str, dtype=torch.bfloat16):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**CONFIGS[name], tie_word_embeddings=False)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def time_graph(fn, n_warm: int = 3, n_iter: int = 50) -> float:
    """Median seconds of fn() (a CUDA graph replay) over n_iter events-timed calls."""
    for _ in range(n_warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(n_iter):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1000)
    return statistics.median(times)


def graph_of(call, inputs):
    """Record call(*inputs) as a CUDA graph over static copies of inputs; returns replay."""
    return graph_and_output(call, inputs)[0]


def graph_and_output(call, inputs):
    """(replay, output) of call(*inputs) recorded as a CUDA graph over static copies of inputs (warmed up on a side
    stream). replay() replays the graph and holds the static copies: the graph reads their memory, and once freed
    the caching allocator hands it to the next tensor, whose bytes a replay would then read as its inputs (session 17:
    an inductor kernel's bounds assert on the cache position fired in replays that cloned tensors in between)."""
    static = [x.clone() for x in inputs]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        call(*static)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), torch.no_grad():
        out = call(*static)

    def replay():
        g.replay()
        return static

    return replay, out


# inductor settings that change how the glue launches, not what each kernel computes: compiled.torch_compile(pdl=,
# combo=) (qcomp.runtime.torch_compile), alone and together
INDUCTOR_VARIANTS = {"pdl": dict(pdl=True, combo=False), "combo": dict(pdl=False, combo=True),
                     "pdl+combo": dict(pdl=True, combo=True)}


def inductor_variant_rows(name, compiled, inp, out_plain, base_sec, base_compiled_sec, b, label, avg, compile_s, dev):
    """The torch.compile'd qcomp graph again under INDUCTOR_VARIANTS[name]; its logits must equal the plain compile's.

    A variant that reorders or overlaps launches must not change a bit: the logits of 20 graph replays are compared
    with the plain compile's (a kernel reading a buffer before its writer finished would differ), and a mismatch
    drops the row.
    """
    torch._dynamo.reset()
    t = time.perf_counter()
    try:
        fn = compiled.torch_compile(dev, **INDUCTOR_VARIANTS[name])  # the product's call
    except ValueError as e:  # this torch's inductor lacks a setting (runtime.torch_compile.inductor_options)
        print(f"inductor {name}: {e}", flush=True)
        return []
    with torch.no_grad():
        fn(*inp)
    tsec = time.perf_counter() - t
    replay, out = graph_and_output(fn, inp)
    out = out[0]
    mismatches, first, self_consistent, worst = 0, None, True, 0.0
    for _ in range(20):
        replay()
        torch.cuda.synchronize()
        mismatches += int(not torch.equal(out, out_plain))
        worst = max(worst, rel_err(out, out_plain))
        first = out.clone() if first is None else first
        self_consistent &= torch.equal(out, first)
    sec = time_graph(replay)
    print(f"{label} batch {b} torch.compile + inductor {name}: {sec * 1e3:.3f} ms/step, {base_sec / sec:.2f}x "
          f"bf16 eager-graph ({tsec:.0f}s to compile); logits differ from the plain compile in {mismatches}/20 "
          f"replays (max rel err {worst:.1e}; replays {'agree' if self_consistent else 'DISAGREE'} among themselves)",
          flush=True)
    row = {"config": f"{label} (torch.compile glue, inductor {name})", "batch": b,
           "ms_per_step": sec * 1e3, "tok_s": b / sec, "speedup": base_sec / sec,
           "speedup_vs_bf16_compiled": base_compiled_sec / sec if base_compiled_sec else None,
           "compile_s": compile_s + tsec, "avg_bits": avg,
           "replays_differing_from_plain_compile": mismatches, "max_rel_err_vs_plain_compile": worst,
           "replays_agree": self_consistent}
    if mismatches:
        # kept in the JSON for diagnosis, left out of the table: a changed bit may be a reordered reduction (replays
        # agree, small error) or a kernel reading a buffer early (replays may disagree); neither is checked further
        print(f"inductor {name}: row left out of the table (its logits differ from the plain compile's)", flush=True)
        row["rejected"] = "logits differ from the plain compile"
    return [row]


def pipelines_of(arg: str, quantize_lm_head: bool = False, sensitivity_file: str | None = None) -> list[tuple]:
    """[(label, pipeline text or "default", env)] of --pipeline: names of PIPELINES, "default" or pipeline texts,
    separated by '|', each optionally followed by '@VAR=VALUE' settings of the environment that hold while that
    entry compiles and runs (e.g. 'speed-fused@QCOMP_PDL=2'); with the lm_head quantized (PipelineError where a
    pipeline lacks the passes that takes) and the sensitivity file joined to allocate-bits."""
    from qcomp.config import DEFAULT_PIPELINE
    from qcomp.pass_manager import with_lm_head_quantized

    out = []
    for i, entry in enumerate(n.strip() for n in arg.split("|")):
        name, *settings = (part.strip() for part in entry.split("@"))
        env = {}
        for kv in settings:
            var, eq, value = kv.partition("=")
            if not eq or not var.strip():
                raise ValueError(f"--pipeline entry {entry!r}: '@{kv}' is not VAR=VALUE (e.g. speed@QCOMP_PDL=2)")
            env[var.strip()] = value.strip()
        text = PIPELINES.get(name, name)
        if quantize_lm_head:
            text = with_lm_head_quantized(DEFAULT_PIPELINE if text == "default" else text)
        label = name if name in PIPELINES or name == "default" else f"pipeline {i + 1}"
        label += "".join(f"@{k}={v}" for k, v in env.items())
        out.append((label, with_sensitivity_file(text, sensitivity_file), env))
    return out


def allocation_histogram(report: dict) -> dict:
    """{code bits: layers} of the compile's allocation (16: layers the DP kept in the float dtype), so that two
    budgets' rows show how their graphs differ."""
    hist: dict[int, int] = {}
    for row in report.get("allocation", {}).get("layers", []):
        hist[int(row["code_bits"])] = hist.get(int(row["code_bits"]), 0) + 1
    return dict(sorted(hist.items()))


def save_tuner_choices(out: Path) -> None:
    """The autotuner's picks of this run (codegen/tune.py's choice file) next to decode.json: which kernel and split
    each (shape, spec) got, so that two runs' times can be told apart by their picks."""
    from qcomp.codegen.render import cache_dir

    src = cache_dir() / "autotune.json"
    if src.exists():
        (out / "autotune.json").write_text(src.read_text())


def main(argv=None) -> int:
    import qcomp
    from qcomp.pass_manager import PipelineError
    from qcomp.passes.quantize_weights import matches
    from qcomp.runtime.executor import Executor
    from qcomp.static_decode import StaticDecodeStep

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="llama3-8b", choices=sorted(CONFIGS))
    ap.add_argument("--budgets", default="4.0,3.5,3.0,2.5")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--pos", type=int, default=128, help="decode position timed (tokens already in the cache)")
    ap.add_argument("--pipeline", default="speed",
                    help="'speed' (default): the default pipeline with 128-wide Hadamard blocks (fused into the "
                         "kernels) and rotated uniform grids (arithmetic dequant), siblings fused; 'speed-fused': "
                         "also the residual adds and norms fused into the kernels; 'unfused': without fuse-siblings "
                         "(the session-11/12 tables); 'default': qcomp's DEFAULT_PIPELINE; or a pipeline's text. "
                         "Several, separated by '|', are timed one after another against the same bf16 rows (an A/B "
                         "in one run)")
    ap.add_argument("--sensitivity-file", default=None,
                    help="α measured earlier (a sensitivity-*.json) for allocate-bits instead of measuring it, e.g. "
                         "benchmarks/results/sensitivity_llama3_8b_random_decode_h100.json (batch 1, same seed)")
    ap.add_argument("--torch-compile", action="store_true",
                    help="also run both sides through torch.compile (inductor fuses the glue) before the CUDA graph: "
                         "bf16 = torch.compile(step); qcomp = compiled.torch_compile(pdl=False, combo=False)")
    ap.add_argument("--inductor-variants", default="",
                    help="with --torch-compile: also compile qcomp's glue with these inductor settings, comma-"
                         f"separated, of {sorted(INDUCTOR_VARIANTS)}; each variant's logits must equal the plain "
                         "compile's bit for bit")
    ap.add_argument("--inductor-deterministic", action="store_true",
                    help="with --torch-compile: torch._inductor.config.deterministic for every compile of the run "
                         "(inductor picks its kernels' configs without timing them, so two compiles of one graph "
                         "reduce in the same order and the variants' bit-equality check sees only launch effects)")
    ap.add_argument("--no-bf16-compile", action="store_true",
                    help="with --torch-compile: skip bf16's torch.compile row (~45 s on the H200); the speedups stay "
                         "against bf16 eager + CUDA graph")
    ap.add_argument("--no-bf16-variants", action="store_true",
                    help="compile bf16 without the --inductor-variants (only qcomp gets them; saves a compile each)")
    ap.add_argument("--no-precompile", action="store_true",
                    help="let the first run compile its tuning candidates one by one (default: a process pool first)")
    ap.add_argument("--quantize-lm-head", action="store_true",
                    help="quantize the lm_head too, its bits chosen by the DP and counted in the budget (default: it "
                         "stays bf16 and out of the budget, as in HIGGS); a --sensitivity-file must then name it")
    ap.add_argument("--out", type=Path, default=Path("decode_results"))
    args = ap.parse_args(argv)
    unknown = [v for v in filter(None, args.inductor_variants.split(",")) if v not in INDUCTOR_VARIANTS]
    if unknown or (args.inductor_variants and not args.torch_compile):
        ap.error(f"--inductor-variants takes {sorted(INDUCTOR_VARIANTS)} (got {unknown or args.inductor_variants!r}) "
                 "and needs --torch-compile")
    if args.inductor_deterministic:
        import torch._inductor.config as inductor_config

        if not args.torch_compile or not hasattr(inductor_config, "deterministic"):
            ap.error(f"--inductor-deterministic needs --torch-compile and a torch whose inductor has the setting "
                     f"'deterministic' (this one, {torch.__version__}: {hasattr(inductor_config, 'deterministic')})")
        inductor_config.deterministic = True
    try:
        pipelines = pipelines_of(args.pipeline, args.quantize_lm_head, args.sensitivity_file)
    except PipelineError as e:
        ap.error(f"--quantize-lm-head: {e}")
    except ValueError as e:
        ap.error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    dev = "cuda"
    t0 = time.perf_counter()
    model = build_model(args.config, dev)
    step = StaticDecodeStep(model, max_len=args.max_len).eval()
    print(f"built {args.config} in {time.perf_counter() - t0:.1f}s", flush=True)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []

    def write_rows():  # after every compiled configuration: a run cut short keeps what it measured
        marked = [{**r, "inductor_deterministic": True} for r in rows] if args.inductor_deterministic else rows
        (args.out / "decode.json").write_text(json.dumps(marked, indent=1))

    def inputs(b):
        ids = torch.randint(0, model.config.vocab_size, (b, 1), device=dev)
        kc, vc = step.new_cache(b)
        kc.normal_()
        vc.normal_()
        return ids, torch.tensor([args.pos], device=dev), kc, vc

    fixed = {b: inputs(b) for b in batches}  # one input per batch size: the calibrated-α cache key stays the same
    base = {}
    for b in batches:
        replay = graph_of(step, fixed[b])
        sec = time_graph(replay)
        base[b] = sec
        rows.append({"config": "bf16 (eager + CUDA graph)", "batch": b, "ms_per_step": sec * 1e3, "tok_s": b / sec,
                     "speedup": 1.0, "compile_s": 0.0, "avg_bits": 16.0})
        print(f"bf16 batch {b}: {sec * 1e3:.3f} ms/step, {b / sec:.1f} tok/s", flush=True)
        del replay
        torch.cuda.empty_cache()
        if args.torch_compile and not args.no_bf16_compile:
            t = time.perf_counter()
            fn = torch.compile(step)
            with torch.no_grad():
                out_c = fn(*fixed[b])[0]
                out_e = step(*fixed[b])[0]
            csec = time.perf_counter() - t
            rel_c = rel_err(out_c, out_e)
            replay = graph_of(fn, fixed[b])
            sec = time_graph(replay)
            base[(b, "compile")] = sec
            rows.append({"config": "bf16 (torch.compile + CUDA graph)", "batch": b, "ms_per_step": sec * 1e3,
                         "tok_s": b / sec, "speedup": base[b] / sec, "compile_s": csec, "avg_bits": 16.0,
                         "rel_err_vs_eager": rel_c})
            print(f"bf16 torch.compile batch {b}: {sec * 1e3:.3f} ms/step ({csec:.0f}s to compile; logit rel err vs "
                  f"eager bf16 {rel_c:.2e}: what inductor's fusion alone changes)", flush=True)
            del replay, fn
            torch.cuda.empty_cache()
            for name in [] if args.no_bf16_variants else filter(None, args.inductor_variants.split(",")):
                # the strong baseline gets them too
                torch._dynamo.reset()
                fn = torch.compile(step, options=inductor_options(**INDUCTOR_VARIANTS[name]))
                with torch.no_grad():
                    fn(*fixed[b])
                replay = graph_of(fn, fixed[b])
                sec = time_graph(replay)
                rows.append({"config": f"bf16 (torch.compile + CUDA graph, inductor {name})", "batch": b,
                             "ms_per_step": sec * 1e3, "tok_s": b / sec, "speedup": base[b] / sec, "compile_s": 0.0,
                             "avg_bits": 16.0})
                print(f"bf16 torch.compile + inductor {name} batch {b}: {sec * 1e3:.3f} ms/step", flush=True)
                del replay, fn
                torch.cuda.empty_cache()

    cache_dir = str(args.out / "sens_cache")
    for (pname, ptext, penv), budget, b in itertools.product(pipelines, [float(x) for x in args.budgets.split(",")],
                                                       batches):
        first_row = len(rows)
        with environment(penv):  # the entry's @VAR=VALUE settings, for its compile, tuning and timing
            pipeline = None if ptext == "default" else ptext
            # the static step's graph is specialized to its batch size (torch.export pins B in the views), so
            # each batch size is compiled on its own; the sensitivity cache is keyed by the graph, so each pays it
            inp = fixed[b]
            t = time.perf_counter()
            compiled = qcomp.compile(step, budget=budget, example_inputs=inp, pipeline=pipeline,
                                     calibration=[inp], cache_dir=cache_dir, device=dev)
            csec = time.perf_counter() - t
            rep = compiled.report
            avg = rep.get("allocation", {}).get("avg_bits", float("nan"))
            print(f"compiled budget {budget} batch {b} in {csec:.1f}s (avg bits {avg:.3f}); passes: "
                  + ", ".join(f"{p['name']} {p['seconds']:.1f}s" for p in rep["passes"]), flush=True)
            ex_rt = Executor(compiled.graph, device=dev)
            if os.environ.get("QCOMP_AUTOTUNE", "1") != "0" and not args.no_precompile:
                with torch.no_grad():
                    pre = ex_rt.precompile(*inp)
                print(f"precompiled {pre['compiled']}/{pre['jobs']} tuning candidates of {pre['calls']} kernel calls "
                      f"with {pre['workers']} processes in {pre['seconds']:.0f}s", flush=True)
            with torch.no_grad():
                out_q = ex_rt.run(*inp)[0]
                out_f = step(*inp)[0]
            rel = rel_err(out_q, out_f)
            replay = graph_of(ex_rt.run, inp)
            sec = time_graph(replay)
            label = f"qcomp budget {budget}" + (", lm_head quantized" if args.quantize_lm_head else "") + (
                f" [{pname}]" if len(pipelines) > 1 or penv else "")
            head = [r["spec"] for r in compiled.layer_table() if matches(r["layer"], "lm_head")]  # as the passes' skip
            lm_head = f"quantized {head[0]}" if head else "bf16"  # the DP may still keep it at 16 bits
            rows.append({"config": label, "batch": b, "ms_per_step": sec * 1e3, "tok_s": b / sec,
                         "speedup": base[b] / sec, "compile_s": csec, "avg_bits": avg, "rel_err_logits": rel,
                         "fallbacks": sorted(ex_rt.fallbacks), "lm_head": lm_head,
                         "bits_histogram": allocation_histogram(rep)})
            print(f"{label} batch {b} (lm_head {lm_head}): {sec * 1e3:.3f} ms/step, {b / sec:.1f} tok/s, "
                  f"{base[b] / sec:.2f}x bf16, logit rel err vs bf16 {rel:.3f}, fallbacks {sorted(ex_rt.fallbacks)}",
                  flush=True)
            del replay
            if args.torch_compile:
                t = time.perf_counter()
                fn = compiled.torch_compile(dev, pdl=False, combo=False)  # the plain compile
                with torch.no_grad():
                    out_c = fn(*inp)[0]
                tsec = time.perf_counter() - t
                rel_c = rel_err(out_c, out_q)
                replay, out_r = graph_and_output(fn, inp)
                replay()
                torch.cuda.synchronize()
                out_r = out_r[0].clone()
                replay_equal = torch.equal(out_r, out_c)  # the graph of the plain compile against its direct call
                sec = time_graph(replay)
                bc = base.get((b, "compile"))  # None with --no-bf16-compile
                rows.append({"config": f"{label} (torch.compile glue)", "batch": b,
                             "ms_per_step": sec * 1e3, "tok_s": b / sec, "speedup": base[b] / sec,
                             "speedup_vs_bf16_compiled": bc / sec if bc else None, "compile_s": csec + tsec,
                             "avg_bits": avg,
                             "rel_err_vs_executor": rel_c, "replay_equals_direct_call": replay_equal,
                             "lm_head": lm_head})
                print(f"{label} batch {b} torch.compile: {sec * 1e3:.3f} ms/step, {base[b] / sec:.2f}x bf16 "
                      f"eager-graph{f', {bc / sec:.2f}x bf16 compiled' if bc else ''} ({tsec:.0f}s to compile; rel "
                      f"err vs executor "
                      f"{rel_c:.2e}; its graph replay {'equals' if replay_equal else 'DIFFERS FROM'} its direct "
                      "call)", flush=True)
                del replay, fn
                for name in filter(None, args.inductor_variants.split(",")):
                    rows.extend(inductor_variant_rows(name, compiled, inp, out_r, base[b], bc, b, label, avg,
                                                      csec + tsec, dev))
            del compiled, ex_rt
            torch.cuda.empty_cache()
            for r in rows[first_row:]:
                r["env"] = dict(penv)  # the settings this entry ran under ({}: the caller's environment)
            write_rows()
    write_rows()
    save_tuner_choices(args.out)
    print(f"\n{torch.cuda.get_device_name()} | {args.config} | max_len {args.max_len}, pos {args.pos}"
          + (" | inductor deterministic" if args.inductor_deterministic else ""))
    print("| config | batch | ms/step | tok/s | × bf16 | avg bits | compile s |")
    print("|---|---|---|---|---|---|---|")
    for r in (r for r in rows if "rejected" not in r):
        print(f"| {r['config']} | {r['batch']} | {r['ms_per_step']:.3f} | {r['tok_s']:.1f} | {r['speedup']:.2f} | "
              f"{r['avg_bits']:.3f} | {r['compile_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
