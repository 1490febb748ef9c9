"""Greedy generation of a compiled causal LM: the Triton path against the reference runtime (issue 7).

    python3 benchmarks/gpu_generate.py --model DIR [--budget 5.0] [--tokens 32] [--out OUT]

DIR is a Hugging Face directory (config + safetensors) or a directory holding a .gguf file (see gpu_quality.py).
The decoder step (qcomp.generate.DecoderStep, KV cache as inputs/outputs) is compiled once with the default
pipeline at --budget. The same compiled graph is then run two ways:
  * triton    : the Executor (generated Triton qlinear kernels), activations in float16;
  * reference : the reference runtime (dequantize + matmul), activations in float32;
and each generates --tokens greedy tokens for every prompt. Printed: the texts, whether the token ids are
identical, where they first differ, ms per token of each path, and the executor's fallbacks (must be none:
a fallback means the reference ran instead of a kernel). Results: OUT/generate.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_quality import load_model  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "The three primary colors are"]
# allocate-bits measures the step graph's sensitivity with one batch of random tokens (instead of 4): this
# check compares two runtimes on one compiled graph, the allocation's quality is measured in gpu_quality.py
PIPELINE = "canonicalize,insert-hadamard,fuse-hadamard(residual=False),allocate-bits(n_batches=1),quantize,lower"


def main(argv=None) -> int:
    from qcomp.api import CompiledModel
    from qcomp.generate import Generator, compile_for_generation

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--budget", type=float, default=5.0)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--pipeline", default=PIPELINE)
    ap.add_argument("--out", type=Path, default=Path("generate_results"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(args.model, args.device)
    t = time.perf_counter()
    gen = compile_for_generation(model, budget=args.budget, pipeline=args.pipeline, device=args.device,
                                 cache_dir=str(args.out / "cache"), progress=False)
    compile_s = time.perf_counter() - t
    c = gen.compiled
    ref = Generator(CompiledModel(c.graph, c.config, c.report, device=args.device, runtime="reference"),
                    (gen.n_layers, gen.n_kv_heads, gen.head_dim), gen.eos_token_ids, dtype=torch.float32,
                    device=args.device)
    tri = gen.to(dtype=torch.float16) if args.device == "cuda" else gen
    print(f"compiled budget {args.budget} in {compile_s:.1f}s, avg bits "
          f"{c.report.get('allocation', {}).get('avg_bits', float('nan')):.3f}", flush=True)
    rows = []
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        out = {}
        for name, g in (("triton", tri), ("reference", ref)):
            g.generate(ids, 2, stop_at_eos=False)  # warm-up (kernel compilation, dequant caches)
            if args.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            seq = g.generate(ids, args.tokens, stop_at_eos=False)[0, ids.shape[1]:].cpu()
            if args.device == "cuda":
                torch.cuda.synchronize()
            out[name] = (seq, (time.perf_counter() - t) / args.tokens * 1e3)
        a, b = out["triton"][0], out["reference"][0]
        diff = (a != b).nonzero()
        first = int(diff[0]) if diff.numel() else None
        row = {"prompt": prompt, "same": first is None, "first_difference": first,
               "triton_text": tok.decode(a.tolist()), "reference_text": tok.decode(b.tolist()),
               "triton_ms_per_token": out["triton"][1], "reference_ms_per_token": out["reference"][1]}
        rows.append(row)
        print(f"\n[{prompt}] identical {args.tokens} tokens: {row['same']} (first difference: {first})\n"
              f"  triton   : {row['triton_text']!r}\n  reference: {row['reference_text']!r}\n"
              f"  ms/token triton {row['triton_ms_per_token']:.1f}, reference {row['reference_ms_per_token']:.1f}",
              flush=True)
    fallbacks = sorted(getattr(tri.compiled._runtime, "fallbacks", []))
    res = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "budget": args.budget,
           "pipeline": args.pipeline, "compile_s": compile_s, "executor_fallbacks": fallbacks, "rows": rows}
    (args.out / "generate.json").write_text(json.dumps(res, indent=1))
    print(f"\nexecutor fallbacks: {fallbacks or 'none'}; all identical: {all(r['same'] for r in rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
