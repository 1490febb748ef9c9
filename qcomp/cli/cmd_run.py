"""qcomp run ARTIFACT (INPUTS.safetensors | --prompt TEXT) [--out OUT.safetensors] [--json]

Loads an artifact (hashes and format checked, graph verified) and runs it:

* with an input file: a safetensors file whose tensors are the graph inputs, keyed by input name
  (as `qcomp inspect` lists them) or by position ("0", "1", ... or "input_0", ...); prints each output's
  shape, dtype and leading values, and writes all outputs to --out (keys: output names, or "output" /
  "output_0"... for tensor and tuple outputs).
* with --prompt, for causal LMs: tokenizes with the tokenizer saved in the artifact (or --tokenizer DIR,
  or --tokenizer bytes: UTF-8 bytes as token ids, for byte-vocabulary models like builtin:tiny-llama),
  then generates, greedily or with --sample (--temperature, --top-k, --seed). An artifact compiled with
  `qcomp compile --generation` holds the decoder step: it decodes token by token through the KV cache
  (a CUDA graph per token with a static cache on a GPU); any other causal LM re-runs the full sequence.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from qcomp.generate import _TokenLoop, generator_for


def register(sub) -> None:
    p = sub.add_parser("run", help="run a compiled artifact on an input file or a prompt")
    p.add_argument("artifact", help="artifact directory (qcomp compile --out)")
    p.add_argument("inputs", nargs="?", default=None, help="safetensors file of input tensors")
    p.add_argument("--prompt", default=None, help="text prompt (causal LMs): generate text")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--sample", action="store_true", help="sample from softmax(logits / temperature) (default: greedy)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampler")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory, or 'bytes' (default: the artifact's own)")
    p.add_argument("--out", default=None, help="write the outputs (or generated ids) to this safetensors file")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"], help="compute dtype")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--traceback", action="store_true", help="show Python tracebacks on errors")
    p.set_defaults(func=run)


def flatten_outputs(out, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a model output under stable names: a tensor -> "output"; a dict -> its keys; a tuple ->
    "output_0", "output_1", ...; nested containers join names with "."."""
    if isinstance(out, torch.Tensor):
        return {prefix or "output": out}
    if isinstance(out, dict):
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, (list, tuple)):
        items = [(str(i) if prefix else f"output_{i}", v) for i, v in enumerate(out)]
    else:
        return {}
    flat: dict[str, torch.Tensor] = {}
    for k, v in items:
        flat.update(flatten_outputs(v, f"{prefix}.{k}" if prefix else k))
    return flat


def match_inputs(tensors: dict[str, torch.Tensor], inputs: list[dict]) -> list[torch.Tensor]:
    """Order the file's tensors as the graph's inputs (by name, else by position)."""
    out = []
    for spec in sorted(inputs, key=lambda s: s["index"]):
        i, name = spec["index"], spec["name"]
        for key in (name, str(i), f"input_{i}"):
            if key in tensors:
                out.append(tensors[key])
                break
        else:
            want = ", ".join(f"{s['name']!r} ({s['type']})" for s in inputs)
            raise ValueError(f"the input file has no tensor for input {i} {name!r} (keys: {sorted(tensors)}); "
                             f"the model takes: {want}")
    return out


def describe(flat: dict[str, torch.Tensor], n: int = 6) -> dict:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
                "values": [float(x) if v.is_floating_point() else int(x) for x in v.detach().flatten()[:n].cpu()]}
            for k, v in flat.items()}


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255 (for byte-vocabulary models such as builtin:tiny-llama)."""

    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids) -> str:
        return bytes(int(i) % 256 for i in ids).decode(errors="replace")


def get_tokenizer(artifact: Path, choice: str | None):
    from qcomp.artifact import tokenizer_dir

    if choice == "bytes":
        return ByteTokenizer()
    where = Path(choice) if choice else tokenizer_dir(artifact)
    if where is None:
        raise ValueError(f"{artifact} holds no tokenizer: pass --tokenizer DIR (a Hugging Face model or tokenizer "
                         "directory), or --tokenizer bytes for byte-vocabulary models like builtin:tiny-llama")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ValueError("--prompt with a saved tokenizer needs transformers: pip install 'qcomp[hf]'") from None
    return AutoTokenizer.from_pretrained(str(where), local_files_only=True)


def logits_of(out) -> torch.Tensor:
    t = out.get("logits") if isinstance(out, dict) else out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(t, torch.Tensor) or t.dim() != 3:
        raise ValueError("--prompt needs a causal LM returning logits [batch, seq, vocab]; this model returns "
                         f"{sorted(out) if isinstance(out, dict) else type(out).__name__} (compile the *ForCausalLM "
                         "class, or run it on an input file instead)")
    return t


class FullRerun(_TokenLoop):
    """Decoding by re-running the whole sequence each step: causal LMs compiled without --generation."""

    eos_token_ids: list[int] = []
    device = torch.device("cpu")

    def __init__(self, model):
        self.model = model

    def _start(self, ids):
        self.seq = ids
        return logits_of(self.model(ids))[:, -1]

    def _advance(self, tok):
        self.seq = torch.cat([self.seq, tok[:, None]], dim=1)
        return logits_of(self.model(self.seq))[:, -1]


def generate(model, ids: list[int], max_new_tokens: int, eos: int | None = None, sample: dict | None = None) -> list[int]:
    """Token ids of prompt + up to max_new_tokens new tokens (greedy, or sampled with `sample` = the generate()
    keywords do_sample/temperature/top_k/seed), through the KV-cache generator of a decoder-step artifact, else by
    full re-runs."""
    if (getattr(model, "report", None) or {}).get("generation"):
        dev = getattr(model._runtime, "device", None)
        loop = generator_for(model, device=dev, dtype=getattr(model._runtime, "dtype", None))
    else:
        loop = FullRerun(model)
    out = loop.generate(torch.tensor([ids], dtype=torch.long), max_new_tokens,
                        eos_token_id=eos, **(sample or {}))  # eos None: the step's recorded EOS, if any
    return [int(t) for t in out[0]]


def run(args) -> int:
    import qcomp
    from safetensors.torch import load_file, save_file

    if (args.inputs is None) == (args.prompt is None):
        raise ValueError("give exactly one of: an input file (safetensors) or --prompt TEXT")
    model = qcomp.load(args.artifact, device=args.device)
    if args.dtype:
        model.to(dtype=getattr(torch, args.dtype))
    manifest = model.report["artifact"]["manifest"]
    if args.prompt is not None:
        inputs = manifest["graph"]["inputs"]
        if not manifest.get("generation") and (len(inputs) != 1 or not inputs[0]["type"].startswith(("i64", "i32"))):
            raise ValueError("--prompt needs a causal LM whose only input is token ids, or a decoder step (qcomp compile "
                             "--generation); this model takes "
                             f"{', '.join(i['name'] + ': ' + i['type'] for i in inputs)}: use an input file instead")
        if args.sample and not args.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {args.temperature}")
        tok = get_tokenizer(Path(args.artifact), args.tokenizer)
        prompt_ids = list(tok.encode(args.prompt))
        sample = {"do_sample": True, "temperature": args.temperature, "top_k": args.top_k, "seed": args.seed} \
            if args.sample else None
        seq = generate(model, prompt_ids, args.max_new_tokens, getattr(tok, "eos_token_id", None), sample)
        new = seq[len(prompt_ids):]
        text = tok.decode(new)
        if args.out:
            save_file({"ids": torch.tensor(seq, dtype=torch.long)}, args.out)
        if args.json:
            print(json.dumps({"prompt": args.prompt, "prompt_ids": prompt_ids, "generated_ids": new, "text": text}))
        else:
            print(args.prompt + text)
        return 0
    try:
        tensors = load_file(args.inputs)
    except Exception as e:
        raise ValueError(f"{args.inputs} is not a readable safetensors file: {e}") from None
    flat = flatten_outputs(model(*match_inputs(tensors, manifest["graph"]["inputs"])))
    if args.out:
        save_file({k: v.detach().cpu().contiguous() for k, v in flat.items()}, args.out)
    info = describe(flat)
    if args.json:
        print(json.dumps({"outputs": info, "out": args.out}, indent=2))
    else:
        for k, d in info.items():
            print(f"{k}: {d['dtype']}{d['shape']}  first values {['%.5g' % x for x in d['values']]}")
        if args.out:
            print(f"outputs written to {args.out}")
    return 0
