"""One decode step of a compiled static-cache decoder on the CPU, three ways: the reference runtime
(`compiled(...)`, which keeps each qlinear's dequantized weight after its first use), the fx graph module
(`compiled.graph_module()`, whose qlinear op dequantizes on every CPU call) and inductor over it
(`compiled.torch_compile()`). One command:

    python benchmarks/cpu_decode_step.py --model .models/smollm2-135m [--budget 5.0] [--no-inductor]

(--model tiny: gpu_decode.py's tiny Llama config with random weights, for a quick check.)

Prints ms per step (mean of 5 after a warm-up), the compile times, and each path's logits' relative error
against the reference runtime's on the same fresh inputs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_decode import CONFIGS, rel_err  # noqa: E402


def timed(fn, args, n: int = 5):
    """(seconds of the first call: the warm-up, and for torch.compile the compile; mean ms of the next n; output)."""
    t = time.perf_counter()
    fn(*args)
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    return first, (time.perf_counter() - t) / n * 1e3, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a Hugging Face Llama-architecture causal LM directory, or 'tiny'")
    ap.add_argument("--budget", type=float, default=5.0)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--no-inductor", action="store_true", help="skip torch.compile (minutes on 2 cores)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import transformers

    from qcomp.generate import compile_for_generation

    torch.manual_seed(0)
    if args.model == "tiny":
        lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIGS["tiny"])).eval()
    else:
        lm = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    t = time.perf_counter()
    gen = compile_for_generation(lm, budget=args.budget, max_len=args.max_len)
    print(f"qcomp compile (budget {args.budget}): {time.perf_counter() - t:.1f} s")
    compiled = gen.compiled
    g = torch.Generator().manual_seed(1)
    inp = (torch.randint(0, lm.config.vocab_size, (1, 1), generator=g), torch.tensor([3]),
           torch.randn(gen.cache_shape, generator=g), torch.randn(gen.cache_shape, generator=g))
    rows = []
    with torch.no_grad():
        _, ms, ref = timed(compiled, inp)
        rows.append(("reference runtime (compiled(...))", ms, 0.0, 0.0))
        _, ms, out = timed(compiled.graph_module(), inp)
        rows.append(("graph module", ms, 0.0, rel_err(out[0], ref[0])))
        if not args.no_inductor:
            torch._dynamo.reset()
            compile_s, ms, out = timed(compiled.torch_compile(pdl=False, combo=False), inp)
            rows.append(("inductor (compiled.torch_compile())", ms, compile_s, rel_err(out[0], ref[0])))
    print(f"{args.model} | budget {args.budget} | batch 1 | torch {torch.__version__} | {torch.get_num_threads()} threads")
    print("| path | ms/step | compile s | logits rel err vs reference |\n|---|---|---|---|")
    for name, ms, cs, err in rows:
        print(f"| {name} | {ms:.1f} | {cs:.0f} | {err:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
