"""qcomp compile MODEL --budget B [--out DIR] [--dump-dir DIR] [--pipeline P] [--json]
   [--generation [--max-len N] [--batch B]]

--generation compiles a causal LM's decoder step with its KV cache (qcomp.generate.compile_for_generation)
instead of the whole-sequence forward: `qcomp run DIR --prompt ...` then decodes token by token through the
cache. With --max-len the cache is static (Llama-architecture models; a CUDA graph per token on a GPU)."""
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
    p.add_argument("--generation", action="store_true",
                   help="causal LMs: compile the decoder step with a KV cache (for `qcomp run --prompt`)")
    p.add_argument("--max-len", type=int, default=None,
                   help="with --generation: a static cache of this many positions (Llama-architecture models)")
    p.add_argument("--batch", type=int, default=1, help="with --generation --max-len: prompts per call")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of a table")
    p.add_argument("--traceback", action="store_true", help="show Python tracebacks on errors")
    p.set_defaults(func=run)


def run(args) -> int:
    import qcomp
    from qcomp.models.loading import load_model_ref

    if (args.max_len is not None or args.batch != 1) and not args.generation:
        raise ValueError("--max-len and --batch describe the decoder step's cache: add --generation")
    model, inputs = load_model_ref(args.model)
    progress = not args.json and sys.stderr.isatty()
    if args.generation:
        from qcomp.generate import compile_for_generation

        gen = compile_for_generation(model, budget=args.budget, max_len=args.max_len, batch=args.batch,
                                     pipeline=args.pipeline, dump_dir=args.dump_dir, progress=progress)
        compiled = gen.compiled
    else:
        compiled = qcomp.compile(model, budget=args.budget, example_inputs=inputs, pipeline=args.pipeline,
                                 dump_dir=args.dump_dir, progress=progress)
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
