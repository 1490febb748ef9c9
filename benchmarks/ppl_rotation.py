"""Perplexity of SmolLM2-135M on wikitext-2: Hadamard rotation + Gaussian (MSE-optimal) grids vs plain RTN.

    python benchmarks/ppl_rotation.py [--model DIR] [--data FILE] [--windows 20] [--bits 3,4,5] \
        [--out benchmarks/RESULTS_rotation.md] [--ablation]

One run: capture the model once (torch.export, float32), then for each configuration run qcomp passes
on the captured graph and evaluate with the reference runtime on the same 20 non-overlapping windows
of 1024 tokens (perplexity = exp of the mean next-token NLL over all predicted tokens):

* float         canonicalize
* rtn           canonicalize, quantize(grid=uniform, scale=absmax, bits=b, group_size=128)   (no rotation)
* rot+normal p  canonicalize, insert-hadamard, fuse-hadamard, quantize(grid=normal, p=p, bits=b, group_size=128)
* --ablation adds rot+rtn (rotation, uniform absmax grid), normal p=1 without rotation, and normal p=1
  after insert-hadamard alone (no fuse: no RMSNorm folding, every linear rotated online), to tell the
  effects of rotation, grid and fusion apart.

lm_head stays float (the quantize pass's default skip). bits per weight = b + 16/128 for the fp16 scales
(+ the lookup table, amortized), the same for every grid at a given b. The table and a JSON copy of the
numbers are written next to --out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
MODEL_CANDIDATES = [Path(os.environ.get("QCOMP_MODELS_DIR", REPO / ".models")) / "smollm2-135m", Path("/tmp/dl/smollm2_hf")]
NOTES = "<!-- notes -->"
DATA = Path(os.environ.get("QCOMP_DATA_DIR", REPO.parent / "shared" / "data")) / "wikitext2_test.txt"


def find_model(arg: str | None) -> Path:
    for p in ([Path(arg)] if arg else MODEL_CANDIDATES):
        if (p / "config.json").exists():
            return p
    sys.exit(f"SmolLM2-135M not found (looked in {', '.join(map(str, MODEL_CANDIDATES))}); pass --model DIR")


def windows(model_dir: Path, data: Path, n: int, seq: int) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok(data.read_text(), return_tensors="pt").input_ids[0]
    if ids.numel() < n * seq:
        sys.exit(f"{data} has {ids.numel()} tokens, fewer than {n} windows of {seq}")
    return ids[: n * seq].view(n, seq)


def configurations(bits: list[int], group: int, ablation: bool) -> list[dict]:
    out = [{"name": "float", "rotate": False, "quant": None}]
    if ablation:
        out.append({"name": "rot float (insert+fuse; no quantization)", "rotate": True, "quant": None})
    for b in bits:
        out.append({"name": f"rtn {b}b", "rotate": False, "bits": b,
                    "quant": {"grid": "uniform", "scale": "absmax", "bits": b, "group_size": group}})
        for p in (1, 2):
            if b * p <= 8:
                out.append({"name": f"rot+normal p={p} {b}b", "rotate": True, "bits": b,
                            "quant": {"grid": "normal", "p": p, "bits": b, "group_size": group}})
        if ablation:
            out.append({"name": f"rot+rtn {b}b", "rotate": True, "bits": b,
                        "quant": {"grid": "uniform", "scale": "absmax", "bits": b, "group_size": group}})
            out.append({"name": f"normal p=1 {b}b (no rot)", "rotate": False, "bits": b,
                        "quant": {"grid": "normal", "p": 1, "bits": b, "group_size": group}})
            out.append({"name": f"rot (insert only)+normal p=1 {b}b", "rotate": "insert", "bits": b,
                        "quant": {"grid": "normal", "p": 1, "bits": b, "group_size": group}})
    return out


def run_passes(graph, pipeline: list[tuple[str, dict]]):
    from qcomp.pass_manager import PassContext, PassManager

    pm = PassManager(pipeline)
    g = pm.run(graph, PassContext())
    return g, {r.name: r.stats for r in pm.records}


@torch.no_grad()
def perplexity(graph, ids: torch.Tensor, batch: int) -> float:
    from qcomp.runtime.reference import ReferenceRuntime

    rt = ReferenceRuntime(graph)
    nll, count = 0.0, 0
    for w in ids.split(batch):
        out = rt.run(w)
        logits = out["logits"] if isinstance(out, dict) else out
        nll += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), w[:, 1:].flatten(), reduction="sum"))
        count += w[:, 1:].numel()
    return math.exp(nll / count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--bits", default="3,4,5")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4, help="windows per forward")
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--only", help="comma-separated configuration names to run (default: all)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS_rotation.md"))
    ap.add_argument("--no-residual", action="store_true",
                    help="fuse-hadamard(residual=False): keep every linear's rotation online, fold no RMSNorm weights")
    args = ap.parse_args()

    from transformers import LlamaForCausalLM

    import qcomp.passes  # noqa: F401  (registers the passes)
    from qcomp.capture import capture_model

    model_dir = find_model(args.model)
    ids = windows(model_dir, Path(args.data), args.windows, args.seq)
    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    t0 = time.time()
    captured = capture_model(model, (ids[:2],))  # batch 2: keeps the batch dim dynamic
    del model
    base, _ = run_passes(captured, [("canonicalize", {})])
    inserted, _ = run_passes(base, [("insert-hadamard", {})])
    rotated, rot_stats = run_passes(inserted, [("fuse-hadamard", {"residual": not args.no_residual})])
    print(f"captured and rotated in {time.time() - t0:.0f}s; online rotations {rot_stats['fuse-hadamard']['online_before']}"
          f" -> {rot_stats['fuse-hadamard']['online_after']}", flush=True)

    confs = configurations([int(b) for b in args.bits.split(",")], args.group, args.ablation)
    if args.only:
        keep = {s.strip() for s in args.only.split(",")}
        confs = [c for c in confs if c["name"] in keep]
    rows = []
    for c in confs:
        t0 = time.time()
        g, stats = {False: base, True: rotated, "insert": inserted}[c["rotate"]], {}
        if c["quant"]:
            g, stats = run_passes(g, [("quantize", dict(c["quant"]))])
            stats = stats["quantize"]
        ppl = perplexity(g, ids, args.batch)
        row = {"name": c["name"], "bits": c.get("bits"), "bits_per_weight": stats.get("average_bits"),
               "ppl": ppl, "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del g
    write_results(Path(args.out), rows, args, model_dir, rot_stats)


def write_results(out: Path, rows: list[dict], args, model_dir: Path, rot_stats: dict) -> None:
    fuse = rot_stats["fuse-hadamard"]
    lines = [
        "# Rotation + Gaussian grids vs RTN: SmolLM2-135M, wikitext-2",
        "",
        f"Made by `{' '.join(['python benchmarks/ppl_rotation.py'] + sys.argv[1:])}` "
        f"({args.windows} non-overlapping windows of {args.seq} tokens from {Path(args.data).name}, model {model_dir.name}, "
        f"float32, reference runtime on CPU, group size {args.group}, lm_head float).",
        "",
        (f"Rotation: insert-hadamard + fuse-hadamard; residual stream rotated offline (block "
         f"{fuse['regions'][0]['size'] if fuse['regions'] else '-'}), online rotations {fuse['online_before']} -> "
         f"{fuse['online_after']} (before o_proj and down_proj).") if fuse["regions"] else
        (f"Rotation: insert-hadamard + fuse-hadamard(residual=False): every quantized linear keeps its block "
         f"Hadamard online ({fuse['online_after']} online rotations, fused into the kernels by `lower`); no RMSNorm folding."),
        "",
        "| configuration | bits | bits/weight | perplexity | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        bpw = f"{r['bits_per_weight']:.3f}" if r["bits_per_weight"] else "16 (float)"
        lines.append(f"| {r['name']} | {r['bits'] or '-'} | {bpw} | {r['ppl']:.2f} | {r['seconds']} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    table = "\n".join(lines) + "\n"
    old = out.read_text() if out.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""  # hand-written analysis below the marker is kept
    out.write_text(table + ("\n" + notes if notes else ""))
    print(table)


if __name__ == "__main__":
    main()
