"""Tokens per second of qcomp's two generators on one GPU (issue 7): the static-cache StaticGenerator (one CUDA
graph of the decoder step, replayed per token) against the dynamic-cache Generator (node-by-node executor).

    python3 benchmarks/gpu_generate_speed.py [--config smollm2-135m] [--budget 4.0] [--tokens 64] [--out OUT]

The model is built from its config with random weights (gpu_decode.CONFIGS; no download), in bf16 on the GPU.
Both generators compile its decoder step with gpu_decode's speed pipeline at --budget. Printed: compile seconds,
ms per generated token (prompt of 8 tokens, greedy, --tokens new tokens, after a warm-up call), and whether the
static generator's Triton/CUDA-graph path gives the same greedy ids as its own graph on the reference runtime
(float32). Results: OUT/generate_speed.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_decode import CONFIGS, SPEED_PIPELINE, build_model  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def ms_per_token(gen, ids, n) -> tuple[float, torch.Tensor]:
    gen.generate(ids, 2, stop_at_eos=False)  # warm-up: kernel compilation, autotuning, CUDA-graph recording
    sync()
    t = time.perf_counter()
    out = gen.generate(ids, n, stop_at_eos=False)
    sync()
    return (time.perf_counter() - t) / n * 1e3, out.cpu()


def main(argv=None) -> int:
    from qcomp.api import CompiledModel
    from qcomp.generate import StaticGenerator, compile_for_generation

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="smollm2-135m", choices=sorted(CONFIGS))
    ap.add_argument("--budget", type=float, default=4.0)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--pipeline", default=None, help="pass pipeline (default: gpu_decode's speed pipeline, 64-wide)")
    ap.add_argument("--skip-dynamic", action="store_true", help="time the static generator only")
    ap.add_argument("--device", default="cuda", help="cuda (the measurement), or cpu (a smoke test of this script)")
    ap.add_argument("--out", type=Path, default=Path("generate_speed"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = args.device
    model = build_model(args.config, dev, dtype=torch.bfloat16 if dev == "cuda" else torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0)).to(dev)
    res = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "config": args.config,
           "budget": args.budget, "rows": []}
    # SmolLM2's hidden size 576 is 4.5 groups of 128: blocks and groups of 64 keep every layer quantizable
    pipeline = args.pipeline or SPEED_PIPELINE.replace("max_block=128", "max_block=64").replace("group_sizes=[128]",
                                                                                               "group_sizes=[64]")
    kw = dict(budget=args.budget, pipeline=pipeline, cache_dir=str(args.out / "cache"), check=False)
    t = time.perf_counter()
    static = compile_for_generation(model, max_len=args.max_len, **kw)
    cs = time.perf_counter() - t
    ms_s, out_s = ms_per_token(static, ids, args.tokens)
    c = static.compiled
    # same graph on the reference runtime (dequantize + matmul); its caches in the graph's own dtype (the bf16
    # model's graph writes bf16 keys and values: float32 caches failed index_copy on the GPU)
    ref = StaticGenerator(CompiledModel(c.graph, c.config, c.report, device=dev, runtime="reference"),
                          static.cache_shape, dtype=static.dtype, device=dev)
    ms_r, out_r = ms_per_token(ref, ids, args.tokens)
    same = int((out_s != out_r).nonzero()[:, 1].min()) if (out_s != out_r).any() else None
    res["rows"].append({"generator": "static (CUDA graph)", "compile_s": cs, "ms_per_token": ms_s,
                        "reference_ms_per_token": ms_r, "first_difference_vs_reference": same})
    print(f"static: compiled in {cs:.1f}s; {ms_s:.2f} ms/token ({1e3 / ms_s:.0f} tok/s); reference runtime "
          f"{ms_r:.1f} ms/token; greedy ids vs reference: {'identical' if same is None else f'first differ at {same}'}",
          flush=True)
    if args.skip_dynamic:
        (args.out / "generate_speed.json").write_text(json.dumps(res, indent=1))
        return 0
    t = time.perf_counter()
    dyn = compile_for_generation(model, **kw)
    cd = time.perf_counter() - t
    ms_d, _ = ms_per_token(dyn, ids, args.tokens)
    res["rows"].append({"generator": "dynamic (executor)", "compile_s": cd, "ms_per_token": ms_d})
    print(f"dynamic: compiled in {cd:.1f}s; {ms_d:.2f} ms/token ({1e3 / ms_d:.0f} tok/s)", flush=True)
    (args.out / "generate_speed.json").write_text(json.dumps(res, indent=1))
    print(f"\n{args.config} random weights, budget {args.budget}, {res['device']}: static {ms_s:.2f} ms/token, "
          f"dynamic {ms_d:.2f} ms/token ({ms_d / ms_s:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
