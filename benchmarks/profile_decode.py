"""Where a decode step's GPU time goes: bf16 vs qcomp, per kernel category, for the Llama-3-8B step.

    python benchmarks/profile_decode.py [--config llama3-8b] [--budget 3.5] [--batch 1] [--out DIR]

Builds the same StaticDecodeStep as gpu_decode.py, times both sides as CUDA-graph replays (all of them before any
profiling), then runs one eager step of each under torch.profiler and sums the GPU kernel time per category
(qlinear kernels, split-K fill / cast, matmuls, attention, elementwise, ...). The sum of kernel time next to the replay
time shows how much of a step is launch gaps rather than work. Writes DIR/profile_decode.json with the
top kernels of each side; prints the category table last. The sensitivity cache goes to
DIR/sens_cache (carry it back in to skip the measurement next time: --sens-cache).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_decode import (INDUCTOR_VARIANTS, PIPELINES, build_model, graph_of, time_graph,  # noqa: E402
                        with_sensitivity_file)

CATEGORIES = [  # (category, regex on the kernel name), first match wins
    ("qlinear (generated)", r"^qlinear_|^ql_|_gemv|_gemm_w\d"),
    ("fill / memset", r"fill|memset|zero"),
    ("cast / copy", r"copy|cast|to_copy|convert"),
    ("cuBLAS / matmul", r"gemm|gemv|cutlass|sm90_|ampere_|cublas|splitk|kernel2|nvjet"),
    ("attention", r"flash|fmha|attention|sdpa|softmax"),
    ("reduce (norms)", r"reduce|norm|mean"),
    ("elementwise", r"elementwise|vectorized|unrolled|index|cat|where"),
]


def category(name: str) -> str:
    low = name.lower()
    for cat, pat in CATEGORIES:
        if re.search(pat, low):
            return cat
    return "other"


def kernel_times(fn) -> list[tuple[str, float]]:
    """[(kernel name, µs)] of every GPU kernel one call of fn() launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = []
    for ev in prof.events():
        dt = getattr(ev, "device_type", None)
        if dt is not None and "CUDA" in str(dt):
            out.append((ev.name, float(ev.time_range.elapsed_us())))
    return out


def per_call(graph, kernels: list[tuple[str, float]]) -> list[dict]:
    """The generated kernels in launch order next to the graph's qlinear nodes in program order (the executor
    runs them in that order, one kernel each): [{node, n, k, bits, had, kernel, us}], summed per (n, k, bits)
    by the caller. Empty when the counts differ (a node that launched two kernels, e.g. a separate rotation)."""
    gen = [(name, us) for name, us in kernels if category(name) == "qlinear (generated)"]
    nodes = graph.find("qlinear")
    if len(gen) != len(nodes):
        print(f"per-call table skipped: {len(gen)} generated kernels for {len(nodes)} qlinear nodes", flush=True)
        return []
    return [{"node": nd.name, "n": nd.attrs["n"], "k": nd.attrs["k"], "bits": nd.attrs["spec"]["bits"],
             "kernel": name, "us": us} for nd, (name, us) in zip(nodes, gen)]


def summarize(kernels: list[tuple[str, float]]) -> dict:
    cats: dict[str, list] = defaultdict(lambda: [0, 0.0])
    names: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for name, us in kernels:
        c = cats[category(name)]
        c[0] += 1
        c[1] += us
        n = names[name[:90]]
        n[0] += 1
        n[1] += us
    top = sorted(names.items(), key=lambda kv: -kv[1][1])[:30]
    return {"categories": {k: {"count": v[0], "us": v[1]} for k, v in cats.items()},
            "total_us": sum(us for _, us in kernels), "launches": len(kernels),
            "top": [{"name": k, "count": v[0], "us": v[1]} for k, v in top]}


def main(argv=None) -> int:
    import qcomp
    from qcomp.runtime.executor import Executor
    from qcomp.static_decode import StaticDecodeStep

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="llama3-8b")
    ap.add_argument("--budget", type=float, default=3.5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--pos", type=int, default=128)
    ap.add_argument("--pipeline", default="speed",
                    help="a name of gpu_decode.PIPELINES (speed, speed-fused, unfused) or a pipeline's text")
    ap.add_argument("--sens-cache", type=Path, default=None, help="sensitivity cache dir to reuse (default DIR/sens_cache)")
    ap.add_argument("--sensitivity-file", default=None, help="as gpu_decode.py's --sensitivity-file")
    ap.add_argument("--torch-compile", action="store_true",
                    help="also profile the compiled graph under torch.compile (inductor fuses the glue between the "
                         "qlinear kernels; gpu_decode.py's 'torch.compile glue' row)")
    ap.add_argument("--inductor-variant", choices=sorted(INDUCTOR_VARIANTS), default=None,
                    help="with --torch-compile: compile under these inductor settings (gpu_decode.py's variants)")
    ap.add_argument("--out", type=Path, default=Path("profile_results"))
    args = ap.parse_args(argv)
    if args.inductor_variant and not args.torch_compile:
        ap.error("--inductor-variant needs --torch-compile")
    args.pipeline = with_sensitivity_file(PIPELINES.get(args.pipeline, args.pipeline), args.sensitivity_file)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = "cuda"
    model = build_model(args.config, dev)
    step = StaticDecodeStep(model, max_len=args.max_len).eval()
    b = args.batch
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (b, 1), device=dev)
    kc, vc = step.new_cache(b)
    kc.normal_()
    vc.normal_()
    inp = (ids, torch.tensor([args.pos], device=dev), kc, vc)
    result = {"device": torch.cuda.get_device_name(), "config": args.config, "budget": args.budget, "batch": b}

    # every replay is timed before the first torch.profiler session. Session 15 (H200) timed them after profiling
    # and got 5-14 % more than gpu_decode.py for the same configuration (qcomp executor 5.20 vs 4.56 ms, compiled
    # 3.45 vs 3.13 ms; bf16, timed before any profiling, 7.33 in both): likely the profiler's instrumentation, not
    # isolated
    with torch.no_grad():
        replay = graph_of(step, inp)
        result["bf16_replay_ms"] = time_graph(replay) * 1e3
        del replay
    print(f"bf16 replay {result['bf16_replay_ms']:.3f} ms", flush=True)

    cache = str(args.sens_cache or (args.out / "sens_cache"))
    t = time.perf_counter()
    compiled = qcomp.compile(step, budget=args.budget, example_inputs=inp, pipeline=args.pipeline,
                             calibration=[inp], cache_dir=cache, device=dev)
    result["compile_s"] = time.perf_counter() - t
    result["avg_bits"] = compiled.report.get("allocation", {}).get("avg_bits")
    bits = defaultdict(int)
    for q in compiled.graph.find("qlinear"):
        bits[q.attrs["spec"]["bits"]] += 1
    result["bits_histogram"] = dict(sorted(bits.items()))
    print(f"compiled in {result['compile_s']:.1f}s, avg bits {result['avg_bits']}, {dict(bits)}", flush=True)
    ex = Executor(compiled.graph, device=dev)
    with torch.no_grad():
        if os.environ.get("QCOMP_AUTOTUNE", "1") != "0":
            pre = ex.precompile(*inp)  # the tuning candidates, by a process pool (one by one otherwise)
            print(f"precompiled {pre['compiled']}/{pre['jobs']} candidates in {pre['seconds']:.0f}s", flush=True)
        t = time.perf_counter()
        ex.run(*inp)  # autotune
        torch.cuda.synchronize()
        result["tune_s"] = time.perf_counter() - t
        print(f"tuned in {result['tune_s']:.0f}s", flush=True)
        replay = graph_of(ex.run, inp)
        result["qcomp_replay_ms"] = time_graph(replay) * 1e3
        del replay
        t = time.perf_counter()
        for _ in range(3):
            ex.run(*inp)
        torch.cuda.synchronize()
        result["qcomp_eager_ms"] = (time.perf_counter() - t) / 3 * 1e3
        fn = None
        if args.torch_compile:
            fn = compiled.torch_compile(dev, **INDUCTOR_VARIANTS.get(args.inductor_variant,
                                                                     dict(pdl=False, combo=False)))
            fn(*inp)
            result["inductor_variant"] = args.inductor_variant
            replay = graph_of(fn, inp)
            result["compiled_replay_ms"] = time_graph(replay) * 1e3
            del replay
        # profiles last (see above)
        result["bf16"] = summarize(kernel_times(lambda: step(*inp)))
        qk = kernel_times(lambda: ex.run(*inp))
        result["qcomp"] = summarize(qk)
        result["qlinear_calls"] = per_call(compiled.graph, qk)
        if fn is not None:
            ck = kernel_times(lambda: fn(*inp))
            result["compiled"] = summarize(ck)
            result["compiled_qlinear_calls"] = per_call(compiled.graph, ck)
    ops = defaultdict(int)
    for n in compiled.graph.nodes:
        ops[n.op if n.op != "call" else n.attrs.get("target", "call")] += 1
    result["qir_ops"] = dict(sorted(ops.items(), key=lambda kv: -kv[1]))
    (args.out / "profile_decode.json").write_text(json.dumps(result, indent=1))

    print(f"\n{result['device']} | {args.config} batch {b} | budget {args.budget} (avg bits {result['avg_bits']})")
    print(f"replay: bf16 {result['bf16_replay_ms']:.3f} ms, qcomp {result['qcomp_replay_ms']:.3f} ms "
          f"({result['bf16_replay_ms'] / result['qcomp_replay_ms']:.2f}x); qcomp eager {result['qcomp_eager_ms']:.1f} ms")
    sides = [s for s in ("bf16", "qcomp", "compiled") if s in result]
    if "compiled" in result:
        print(f"qcomp under torch.compile: replay {result['compiled_replay_ms']:.3f} ms "
              f"({result['bf16_replay_ms'] / result['compiled_replay_ms']:.2f}x bf16)")
    print("| category | " + " | ".join(f"{s} launches | {s} µs" for s in sides) + " |")
    print("|---|" + "---|---|" * len(sides))
    cats = sorted(set().union(*(result[s]["categories"] for s in sides)))
    for c in cats:
        cells = [result[s]["categories"].get(c, {"count": 0, "us": 0.0}) for s in sides]
        print(f"| {c} | " + " | ".join(f"{v['count']} | {v['us']:.0f}" for v in cells) + " |")
    print("| total kernel time | " + " | ".join(f"{result[s]['launches']} | {result[s]['total_us']:.0f}"
                                               for s in sides) + " |")
    for side in sides:
        print(f"\ntop kernels, {side}:")
        for r in result[side]["top"][:15]:
            print(f"  {r['us']:9.0f} µs  {r['count']:5d}x  {r['name']}")
    groups: dict[tuple, list] = defaultdict(lambda: [0, 0.0, set()])
    for c in result.get("compiled_qlinear_calls") or result.get("qlinear_calls", []):
        g = groups[(c["n"], c["k"], c["bits"])]
        g[0] += 1
        g[1] += c["us"]
        g[2].add(c["kernel"].split("_m1")[-1] if "_m1" in c["kernel"] else c["kernel"])
    if groups:
        print("\nqlinear calls by shape and width (µs per call; GB/s of packed weight + scales):")
        print("| N x K | bits | calls | µs/call | GB/s | tiles |")
        print("|---|---|---|---|---|---|")
        for (n, k, bits), (cnt, us, tiles) in sorted(groups.items()):
            gbs = (n * k * bits / 8 + n * k / 128 * 2) / (us / cnt * 1e-6) / 1e9
            print(f"| {n} x {k} | {bits} | {cnt} | {us / cnt:.1f} | {gbs:.0f} | {', '.join(sorted(tiles))} |")
    print("\nQIR ops:", ", ".join(f"{k} {v}" for k, v in list(result["qir_ops"].items())[:25]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
