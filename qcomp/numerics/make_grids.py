"""Regenerate the stored normal grids: `python -m qcomp.numerics.make_grids [--p 1 2] [--out DIR]`.

Writes data/normal_p1.json (Lloyd-Max, n = 2..256) and data/normal_p2.json (2-D Lloyd on an equal-mass
quadrature of N(0, I_2), n = 2, 4, ..., 256); see lloyd.py for the algorithms. Points are written with
9 significant digits (exact for float32); the MSE stored is the one of the written (rounded) points:
exact integrals for p = 1, a held-out fine quadrature for p = 2.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .grids import DATA_DIR, GRID_DATA_VERSION, MAX_POINTS
from .lloyd import gaussian_quadrature_2d, scalar_lloyd_max, scalar_mse, vector_lloyd_2d, vector_mse

P2_SIZES = [2**j for j in range(1, 9)]
P2_EVAL_M = 1536


def _round(x: torch.Tensor) -> list[float]:
    return [float(f"{v:.9g}") for v in x.to(torch.float32).flatten().tolist()]


def make_p1() -> dict:
    grids = {}
    for n in range(2, MAX_POINTS + 1):
        pts, _ = scalar_lloyd_max(n)
        rounded = _round(pts)
        grids[str(n)] = {"mse": scalar_mse(rounded), "points": rounded}
    return {
        "version": GRID_DATA_VERSION,
        "p": 1,
        "generator": "qcomp.numerics.lloyd.scalar_lloyd_max (exact Gaussian integrals, Lloyd + Newton)",
        "mse_definition": "E[(X - q(X))^2], X ~ N(0, 1), exact",
        "grids": grids,
    }


def make_p2(sizes=P2_SIZES, log=print) -> dict:
    held_out = gaussian_quadrature_2d(P2_EVAL_M, P2_EVAL_M, phase=0.5)
    grids = {}
    for n in sizes:
        t = time.time()
        pts, _ = vector_lloyd_2d(n, m_eval=P2_EVAL_M)
        rounded = _round(pts)
        mse = vector_mse(torch.tensor(rounded, dtype=torch.float64).reshape(n, 2), held_out)
        grids[str(n)] = {"mse": mse, "points": rounded}
        log(f"p=2 n={n:4d} mse/dim={mse:.6g} ({time.time() - t:.1f} s)")
    return {
        "version": GRID_DATA_VERSION,
        "p": 2,
        "generator": "qcomp.numerics.lloyd.vector_lloyd_2d (Lloyd on an equal-mass quadrature of N(0, I_2), best of 3 starts)",
        "mse_definition": f"per-dimension E|X - q(X)|^2 / 2, X ~ N(0, I_2), held-out {P2_EVAL_M}^2 quadrature",
        "grids": grids,
    }


def write(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    ap.add_argument("--out", type=Path, default=DATA_DIR)
    args = ap.parse_args(argv)
    for p in args.p:
        t = time.time()
        data = make_p1() if p == 1 else make_p2()
        write(data, args.out / f"normal_p{p}.json")
        print(f"wrote {args.out / f'normal_p{p}.json'} ({time.time() - t:.1f} s)")


if __name__ == "__main__":
    main()
