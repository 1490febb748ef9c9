"""qcomp compile MODEL --budget B [--out DIR] [--dump-dir DIR] [--pipeline P] [--json]"""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile a model and print the per-layer decisions")
    p.add_argument("model", nargs="?", default="builtin:tiny-llama",
                   help="builtin:NAME (tiny-llama, tiny-mlp), a Hugging Face directory, or module:factory (default builtin:tiny-llama)")
    p.add_argument("--budget", type=float, default=4.0, help="average bits per weight over quantized layers (1..16)")
    p.add_argument("--pipeline", default=None, help="pass pipeline text (default: qcomp's standard pipeline)")
    p.add_argument("--dump-dir", default=None, help="write the IR after every pass, passes.json and reports here")
    p.add_argument("--out", default=None, help="save the compiled model (artifact directory) here")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of a table")
    p.add_argument("--traceback", action="store_true", help="show Python tracebacks on errors")
    p.set_defaults(func=run)


def run(args) -> int:
    import qcomp
    from qcomp.models.loading import load_model_ref

    model, inputs = load_model_ref(args.model)
    compiled = qcomp.compile(model, budget=args.budget, example_inputs=inputs, pipeline=args.pipeline,
                             dump_dir=args.dump_dir, progress=not args.json and sys.stderr.isatty())
    if args.out:
        from pathlib import Path

        src = Path(args.model)  # a Hugging Face directory: keep its tokenizer with the artifact (for `qcomp run --prompt`)
        tok = str(src) if src.is_dir() and any((src / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")) else None
        compiled.save(args.out, tokenizer=tok)
    if args.json:
        print(json.dumps({"model": args.model, "budget": args.budget, "pipeline": compiled.report.get("pipeline"),
                          "layers": compiled.layer_table(), "kept_float": compiled.report.get("kept_float", [])}, indent=2))
    else:
        print(f"qcomp: compiled {args.model} with pipeline {compiled.report.get('pipeline')}")
        print(compiled.summary())
        if args.dump_dir:
            print(f"dumps: {args.dump_dir}")
        if args.out:
            print(f"artifact: {args.out}")
    return 0
