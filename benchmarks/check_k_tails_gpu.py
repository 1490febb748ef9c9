"""Run the CPU tests' K-tail, x_ahead, l2_ahead, x_once, tma_words and row_acc kernel cases on a CUDA GPU (the tests run them in the interpreter only):
compiled kernels, every input inside NaN poison (tests/conftest.py: guarded), outputs poisoned, against the float32
reference (the fp16 gemv cases also run the half2 path's x pairs, packed by PTX on a GPU). Exit 1 on any failure.

    python3 benchmarks/check_k_tails_gpu.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

os.environ["TRITON_INTERPRET"] = "0"  # (the test module turns the interpreter on where nothing set it)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def on_gpu(d: dict) -> dict:
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in d.items()}


def main() -> int:
    if not torch.cuda.is_available():
        raise SystemExit("check_k_tails_gpu.py needs a CUDA GPU (the CPU tests cover the interpreter)")
    from test_codegen_kernels import (K_TAIL_CASES, L2_AHEAD_CASES, ROW_ACC_CASES, TMA_WORDS_CASES, X_AHEAD_CASES,
                                      X_ONCE_CASES, check, half2_tol, k_tail_case, l2_ahead_case, reference,
                                      row_acc_case, run_kernel, tma_words_case, x_ahead_case, x_once_case)

    runs = []  # (spec, split, N, K, inputs, the CPU reference's output, tolerance)
    for variant, grid, p, g, k, split in K_TAIL_CASES:
        d, spec, n = k_tail_case(variant, grid, p, g, k)
        runs.append((spec, split, n, k, d, reference(d, 3, p, g, grid, n, k, 0), 2e-3))
    for bits, grid, p, had, stages, split, n, k, m in X_AHEAD_CASES:
        d, spec = x_ahead_case(bits, grid, p, had, stages, n, k, m)
        runs.append((spec, split, n, k, d, reference(d, bits, p, 128, grid, n, k, had), 2e-3))
    for bits, grid, p, stages, l2, bn, split, n, k, m in L2_AHEAD_CASES:
        d, spec = l2_ahead_case(bits, grid, p, stages, l2, bn, n, k, m)
        runs.append((spec, split, n, k, d, reference(d, bits, p, 128, grid, n, k, 0), 2e-3))
    for bits, grid, act, m, split, k, g, ahead in X_ONCE_CASES:
        d, spec, _ = x_once_case(bits, grid, act, m, k, g, ahead)
        runs.append((spec, split, 40, k, d, reference(d, bits, 1, g, grid, 40, k, 0), half2_tol(spec)))
    for bits, grid, p, act, m, split, n, k, g, bn, stages, ahead in TMA_WORDS_CASES:
        d, spec, _ = tma_words_case(bits, grid, p, act, m, n, k, g, bn, stages, ahead)
        runs.append((spec, split, n, k, d, reference(d, bits, p, g, grid, n, k, 0), half2_tol(spec)))
    for bits, grid, p, act, m, split, n, k, g, had, bn, extra in ROW_ACC_CASES:
        d, spec, _, tol = row_acc_case(bits, grid, p, act, m, n, k, g, had, bn, extra)
        runs.append((spec, split, n, k, d, reference(d, bits, p, g, grid, n, k, had), tol))
    failed = 0
    for spec, split, n, k, d, ref, tol in runs:
        try:
            check(run_kernel(on_gpu(d), spec, split, n, k).cpu(), ref, tol)
            print(f"ok   {spec.name()} split {split} N={n} K={k}")
        except (AssertionError, RuntimeError) as e:
            failed += 1
            print(f"FAIL {spec.name()} split {split} N={n} K={k}: {type(e).__name__}: {str(e)[:200]}")
    print(f"{len(runs) - failed} of {len(runs)} cases match the reference on {torch.cuda.get_device_name()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
