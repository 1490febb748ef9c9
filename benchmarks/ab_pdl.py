"""Programmatic dependent launch A/B on a GPU: each CUDA graph replays [a 1-row copy kernel writing x, the qlinear
reading x] over weight copies past L2, with QCOMP_PDL=0, 1 and 2 alternating (two rounds, best of each), so that
the qlinear follows another kernel as in a decode step; the results must be equal bit for bit. One command:

    python3 benchmarks/ab_pdl.py

Cases: bf16 x, fused Hadamard 128, uniform grid, group 128, the decode shapes with the autotuner's session-15
tiles. Prints a markdown table (µs per pair, the copy kernel included in both columns).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_env import environment  # noqa: E402
from bench_kernels import GROUP, copies_for, graph_time_us, make_qweight  # noqa: E402

CASES = [(3, 64, 2, 8, 4096, 4096), (2, 128, 2, 16, 4096, 4096), (3, 64, 2, 8, 6144, 4096),
         (3, 64, 2, 4, 28672, 4096), (3, 64, 2, 16, 4096, 14336), (4, 64, 2, 8, 28672, 4096)]  # bits, n, warps, split, N, K


def main() -> int:
    from qcomp.codegen.kernel_spec import KernelSpec
    from qcomp.codegen.ops import launch

    gen = torch.Generator().manual_seed(0)
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")
    print("| N x K | b | tile | split | PDL 0 µs | PDL 1 µs | PDL 2 µs | 1/0 | 2/0 |\n|---|---|---|---|---|---|---|---|---|")
    for bits, bn, w, sk, n, k in CASES:
        spec = KernelSpec(bits=bits, grid="uniform", group_size=GROUP, act_dtype="bf16", had_block=128,
                          variant="gemv", block_m=1, block_n=bn, block_k=128, num_warps=w, num_stages=2)
        packed, scales, lut = make_qweight(n, k, bits, "uniform", gen)
        pcs = [packed] + [packed.clone() for _ in range(copies_for(packed.numel() * 4 + scales.numel() * 2) - 1)]
        src = torch.randn(1, k, generator=gen).bfloat16().cuda()
        xb = torch.empty_like(src)
        signs = (torch.randint(0, 2, (128,), generator=gen) * 2 - 1).float().cuda()
        lut32 = lut.float().contiguous()
        best, outs = {}, {}
        for pdl in ("0", "1", "2", "0", "1", "2"):
            with environment({"QCOMP_PDL": pdl}):
                outs[pdl] = launch(spec, sk, xb.copy_(src), pcs[0], scales, lut32, None, None, signs, n, k).float()
                fns = [lambda p_=p_: (xb.copy_(src), launch(spec, sk, xb, p_, scales, lut32, None, None, signs, n, k))
                       for p_ in pcs]
                best[pdl] = min(best.get(pdl, float("inf")), graph_time_us(fns))
        assert torch.equal(outs["0"], outs["1"]) and torch.equal(outs["0"], outs["2"]), "PDL changed the result"
        print(f"| {n}x{k} | {bits} | n{bn} w{w} | {sk} | {best['0']:.2f} | {best['1']:.2f} | {best['2']:.2f} | "
              f"{best['1'] / best['0']:.3f} | {best['2'] / best['0']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
