"""python -m qcomp.eval MODEL_DIR --text FILE [--budget B ...]: accuracy of a model and its compiled versions.

Causal LMs: perplexity on non-overlapping windows (--windows 20 --seq-len 1024) of the float model and,
for each --budget, of `qcomp.compile(model, budget, pipeline=--pipeline)`, with its mean KL to the float
model on the same windows. Encoders (e.g. all-MiniLM-L6-v2): mean cosine of mean-pooled L2-normalized
embeddings to the float model over --sentences sentences of the text (unpadded, see qcomp.eval.encoder).

    python -m qcomp.eval .models/smollm2-135m --text /work/shared/data/wikitext2_test.txt --budget 4 --budget 3
    python -m qcomp.eval .models/minilm-l6-v2 --text /work/shared/data/wikitext2_test.txt --budget 4 --json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import (encoder_sentences, evaluate_encoder, evaluate_lm, lm_windows, load_causal_lm, load_encoder,
               load_tokenizer, mean_pooled_embeddings, read_text)
from .encoder import tokenize_unpadded
from .loading import compile_hf


def model_kind(path) -> str:
    """'lm' or 'encoder': from config.json's architectures (a causal-LM class name means 'lm'); 'lm' if none are listed."""
    archs = json.loads((Path(path) / "config.json").read_text()).get("architectures") or []
    if not archs or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "lm"
    return "encoder"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m qcomp.eval", description=__doc__.split("\n")[0])
    p.add_argument("model", help="Hugging Face model directory (config.json, safetensors, tokenizer)")
    p.add_argument("--text", required=True, help="evaluation text file (e.g. wikitext-2 test, rows joined by blank lines)")
    p.add_argument("--budget", type=float, action="append", default=[], help="compile at this budget (repeatable)")
    p.add_argument("--pipeline", default=None, help="pass pipeline (default: qcomp's default pipeline)")
    p.add_argument("--kind", choices=["auto", "lm", "encoder"], default="auto")
    p.add_argument("--windows", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print one JSON object per result line")
    return p.parse_args(argv)


def _emit(row: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row), flush=True)
        return
    parts = [f"{row['model']:<28}"]
    for k, fmt in (("ppl", "{:.3f}"), ("kl", "{:.4f}"), ("mean_cosine", "{:.5f}"), ("min_cosine", "{:.5f}"),
                   ("seconds", "{:.0f}s")):
        if row.get(k) is not None:
            parts.append(f"{k} " + fmt.format(row[k]))
    print("  ".join(parts), flush=True)


def main(argv=None) -> int:
    a = parse_args(argv)
    kind = model_kind(a.model) if a.kind == "auto" else a.kind
    tok = load_tokenizer(a.model)
    text = read_text(a.text)
    if kind == "lm":
        model = load_causal_lm(a.model)
        windows = lm_windows(tok, text, a.windows, a.seq_len)
        ref = evaluate_lm(model, windows, keep_logits=True)
        _emit({"model": "float", **ref.row()}, a.json)
        for b in a.budget:
            t0 = time.perf_counter()
            cm = compile_hf(model, b, a.pipeline)
            r = evaluate_lm(cm, windows, reference=ref)
            _emit({"model": f"qcomp budget {b:g}", "compile_seconds": time.perf_counter() - t0 - r.seconds, **r.row()}, a.json)
    else:
        model = load_encoder(a.model)
        tokens = tokenize_unpadded(tok, encoder_sentences(text, a.sentences))
        ref = mean_pooled_embeddings(model, tokens)
        _emit({"model": "float (self-check)", **evaluate_encoder(model, tokens, ref).row()}, a.json)
        for b in a.budget:
            cm = compile_hf(model, b, a.pipeline)
            _emit({"model": f"qcomp budget {b:g}", **evaluate_encoder(cm, tokens, ref).row()}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
