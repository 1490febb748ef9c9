"""Compile SmolLM2-135M (a Hugging Face directory), measure wikitext-2 perplexity against the float model,
and generate text through the compiled graph with a KV cache.

    python -m qcomp.models.prepare --out .models      # once: fetch and convert the model
    python examples/smollm2_perplexity.py --model .models/smollm2-135m --text ../shared/data/wikitext2_test.txt \
        --budget 4.0 --windows 4 --seq-len 512

On a 2-core CPU each window takes tens of seconds; on a GPU pass --device cuda.
"""
import argparse

import torch

from qcomp.eval.data import lm_windows, read_text
from qcomp.eval.lm import evaluate_lm
from qcomp.eval.loading import compile_hf, load_causal_lm, load_tokenizer
from qcomp.generate import compile_for_generation


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--budget", type=float, default=4.0)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompt", default="The capital of France is")
    args = ap.parse_args()

    model = load_causal_lm(args.model).to(args.device)
    tok = load_tokenizer(args.model)
    windows = lm_windows(tok, read_text(args.text), args.windows, args.seq_len).to(args.device)
    ref = evaluate_lm(model, windows, keep_logits=True)
    compiled = compile_hf(model, budget=args.budget, device=args.device)
    print(compiled.summary().splitlines()[-1])
    res = evaluate_lm(compiled, windows, reference=ref)
    print(f"wikitext-2 ppl ({args.windows}x{args.seq_len}): float {ref.ppl:.2f}, qcomp@{args.budget} {res.ppl:.2f}, "
          f"KL {res.kl:.4f}")

    gen = compile_for_generation(model, budget=args.budget, device=args.device)
    text, n = gen.generate_text(tok, args.prompt, max_new_tokens=24)
    print(f"greedy ({n} new tokens): {text!r}")


if __name__ == "__main__":
    main()
