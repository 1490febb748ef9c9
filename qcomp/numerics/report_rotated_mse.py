"""Relative MSE of Hadamard-rotated real weights under RMS-scaled Gaussian grids, against the grid's N(0,1) MSE.

    python -m qcomp.numerics.report_rotated_mse --smollm DIR --minilm DIR [--json OUT]

DIR is a directory with model.safetensors (or the file itself). From each model one linear weight of
every kind (q/k/v/o, gate/up/down; query/key/value/attention-output/intermediate/output) is taken, each
from a different layer spread over the depth. Each weight [N, K] is rotated along K with
hadamard_transform(w, choose_block_size(K), seed) and quantized with QuantSpec(grid="normal", p, bits,
group_size = 128 if it divides K else the rotation block, scale = RMS, fp16). The tables print
relative MSE / grid MSE (1.00 = exactly the Gaussian prediction); the same without rotation is shown
for contrast.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from .grids import normal_grid
from .hadamard import choose_block_size, hadamard_transform
from .quant_spec import QuantSpec
from .quantizer import dequantize_weight, quantize_weight, relative_mse

CONFIGS = [(b, p) for p in (1, 2) for b in (2, 3, 4)]
KINDS = {
    "smollm": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "minilm": ["attention.self.query", "attention.self.key", "attention.self.value",
               "attention.output.dense", "intermediate.dense", "output.dense"],
}


def _file(path: Path) -> Path:
    path = Path(path)
    f = path / "model.safetensors" if path.is_dir() else path
    if not f.exists():
        raise FileNotFoundError(f"{f} does not exist; pass the model directory holding model.safetensors")
    return f


def pick_weights(path: Path, kinds: list[str]) -> dict[str, torch.Tensor]:
    """One weight per kind, from layers spread evenly over the depth."""
    with safe_open(str(_file(path)), "pt") as f:
        keys = list(f.keys())
        layers = sorted({int(m.group(1)) for k in keys if (m := re.search(r"layers?\.(\d+)\.", k))})
        if not layers:
            raise ValueError(f"{path}: no numbered layers found in the safetensors keys")
        out = {}
        for i, kind in enumerate(kinds):
            layer = layers[round(i * (len(layers) - 1) / max(1, len(kinds) - 1))]
            pat = re.compile(rf"layers?\.{layer}\.(.*\.)?{re.escape(kind)}\.weight$")
            names = [k for k in keys if pat.search(k) and not (kind == "output.dense" and "attention" in k)]
            if not names:
                raise ValueError(f"{path}: no weight of kind {kind!r} in layer {layer}")
            out[names[0]] = f.get_tensor(names[0]).to(torch.float32)
    return out


def measure(w: torch.Tensor, seed: int = 0) -> dict:
    n, k = w.shape
    h = choose_block_size(k)
    g = 128 if k % 128 == 0 else h
    row = {"shape": [n, k], "block": h, "group": g, "rotated": {}, "plain": {}}
    w_rot = hadamard_transform(w.double(), h, seed).float()
    for b, p in CONFIGS:
        spec = QuantSpec(bits=b, grid="normal", p=p, group_size=g, scale="rms")
        grid_mse = normal_grid(b, p)[1]
        for name, x in (("rotated", w_rot), ("plain", w)):
            r = relative_mse(x, dequantize_weight(quantize_weight(x, spec), spec))
            row[name][f"b{b}p{p}"] = {"rel_mse": r, "ratio": r / grid_mse}
    return row


def _table(results: dict, which: str) -> str:
    head = "| weight | N x K | block | group | " + " | ".join(f"b{b} p{p}" for b, p in CONFIGS) + " |"
    lines = [head, "|" + "---|" * (4 + len(CONFIGS))]
    grid = " | ".join(f"{normal_grid(b, p)[1]:.5f}" for b, p in CONFIGS)
    lines.append(f"| grid MSE on N(0,1) | | | | {grid} |")
    for model, rows in results.items():
        for name, r in rows.items():
            cells = " | ".join(f"{r[which][f'b{b}p{p}']['ratio']:.3f}" for b, p in CONFIGS)
            lines.append(f"| {model}: {name} | {r['shape'][0]}x{r['shape'][1]} | {r['block']} | {r['group']} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm", type=Path, help="SmolLM2 directory (model.safetensors)")
    ap.add_argument("--minilm", type=Path, help="all-MiniLM-L6-v2 directory (model.safetensors)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rotation's random signs")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    if not (args.smollm or args.minilm):
        ap.error("pass --smollm DIR and/or --minilm DIR")
    results = {}
    for model, path in (("smollm", args.smollm), ("minilm", args.minilm)):
        if path is not None:
            results[model] = {name: measure(w, args.seed) for name, w in pick_weights(path, KINDS[model]).items()}
    print("Relative MSE / grid MSE, rotated (Hadamard block along K, RMS scale):\n")
    print(_table(results, "rotated"))
    print("\nSame, without rotation:\n")
    print(_table(results, "plain"))
    ratios = [c["ratio"] for rows in results.values() for r in rows.values() for c in r["rotated"].values()]
    print(f"\nrotated: ratio range {min(ratios):.3f} .. {max(ratios):.3f}; "
          f"{sum(abs(x - 1) <= 0.10 for x in ratios)}/{len(ratios)} within 10% of the grid MSE")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
