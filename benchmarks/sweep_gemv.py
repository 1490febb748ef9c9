"""Sweep the GEMV tile space (block_n, block_k, warps, stages, split-K) on one GPU; one command.

    python benchmarks/sweep_gemv.py --out DIR [--shapes 28672x8192,8192x28672] [--bits 2,3,4,8] [--hads 0,128]

For each shape, bit width (uniform grid, group 128) and Hadamard block, every candidate spec is compiled
first by a process pool (Triton's disk cache) and then timed like bench_kernels.py (CUDA-graph replay over
weight copies past the L2), with its relative error against the float reference checked. Prints, per case,
the autotuner's current choice and the fastest configurations; writes DIR/sweep_gemv.tsv (every row). The
result decides tune.GEMV_TILES; it is an exploration tool, not the benchmark of record (bench_kernels.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import GROUP, copies_for, copy_bandwidth, graph_time_us, log, make_qweight, relerr  # noqa: E402

BLOCK_N = [32, 64, 128, 256]
BLOCK_K = [128, 256, 512]
WARPS = [2, 4, 8]
STAGES = [2]  # num_stages: the GEMV loads weights num_stages - 1 K steps ahead (--stages widens this)
SPLITS = [1, 2, 4, 8, 16]
MAX_WORDS = 128  # packed words per thread over all prefetch buffers; more spills


def specs_for(bits: int, had: int, m: int, stages=None, act: str = "fp16", block_n=None, block_k=None, warps=None):
    from qcomp.codegen.kernel_spec import KernelSpec

    base = KernelSpec(bits=bits, grid="uniform", p=1, group_size=GROUP, had_block=had, variant="gemv",
                      block_m=m, block_k=max(128, had), act_dtype=act)
    out = []
    for bn, bk, w, st in itertools.product(block_n or BLOCK_N, block_k or BLOCK_K, warps or WARPS, stages or STAGES):
        words = bn * bk // 128 * 4 * base.widest_plane // (32 * w)  # of the widest plane, per thread and K step
        if bk < max(128, had) or words > 64 or words * st > MAX_WORDS:
            continue  # spills
        out.append(dataclasses.replace(base, block_n=bn, block_k=bk, num_warps=w, num_stages=st))
    return out


def compile_jobs_for(specs, m: int, n: int, k: int, act: str) -> list[tuple]:
    """codegen.precompile.compile_jobs tuples for every spec, with and without split-K (a split of 1 is its own
    specialization): the sweep's fp16 scales (bench_kernels.make_qweight), no offsets, no bias, no residual."""
    x_dtype = "bfloat16" if act == "bf16" else "float16"
    return [(s.to_json(), sk, m, n, k, x_dtype, "float16", False, None, False) for s in specs for sk in (1, 2)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "sweep_out"))
    ap.add_argument("--shapes", default="28672x8192,8192x28672")
    ap.add_argument("--bits", default="2,3,4,8")
    ap.add_argument("--hads", default="0")
    ap.add_argument("--ms", default="1")
    ap.add_argument("--stages", default=",".join(map(str, STAGES)),
                    help="num_stages values (prefetch distance + 1), e.g. 2,3,4 for short K ranges")
    ap.add_argument("--act", default="fp16", choices=["fp16", "bf16"],
                    help="activation dtype (bf16: the decode step's rotated kernels)")
    ap.add_argument("--block-n", default=",".join(map(str, BLOCK_N)))
    ap.add_argument("--block-k", default=",".join(map(str, BLOCK_K)))
    ap.add_argument("--warps", default=",".join(map(str, WARPS)))
    ap.add_argument("--splits", default=",".join(map(str, SPLITS)), help="split-K counts to time (1 = none)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--budget", type=float, default=400, help="seconds; later cases are skipped past it")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp

    from qcomp.codegen import tune
    from qcomp.codegen.precompile import compile_jobs
    from qcomp.codegen.hadamard_util import rotate_blocks
    from qcomp.codegen.ops import base_spec, launch, reference_weight

    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    bits_list = [int(b) for b in args.bits.split(",")]
    hads = [int(h) for h in args.hads.split(",")]
    ms = [int(m) for m in args.ms.split(",")]
    stages = [int(v) for v in args.stages.split(",")]
    splits = [int(v) for v in args.splits.split(",")]
    space = dict(act=args.act, block_n=[int(v) for v in args.block_n.split(",")],
                 block_k=[int(v) for v in args.block_k.split(",")], warps=[int(v) for v in args.warps.split(",")])
    dtype = torch.bfloat16 if args.act == "bf16" else torch.float16
    t0 = time.time()
    log(f"GPU {torch.cuda.get_device_name()} | torch {torch.__version__} | copy {copy_bandwidth():.2f} TB/s")
    n0, k0 = shapes[0]
    jobs = [j for b in bits_list for h in hads for m in ms
            for j in compile_jobs_for(specs_for(b, h, m, stages, **space), m, n0, k0, args.act)]
    chunks = [jobs[i:: args.workers] for i in range(args.workers)]
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as ex:
        done = sum(ex.map(compile_jobs, chunks))
    log(f"precompiled {done}/{len(jobs)} (spec, split) pairs with {args.workers} processes in {time.time() - t0:.0f} s")

    tsv = open(os.path.join(args.out, "sweep_gemv.tsv"), "w")
    tsv.write("NxK\tM\tbits\thad\tkernel\tsplit\tus\tTBs\trelerr\n")
    gen = torch.Generator().manual_seed(0)
    summary = []
    for (n, k), bits, had, m in itertools.product(shapes, bits_list, hads, ms):
        if time.time() - t0 > args.budget:
            log(f"SKIP {n}x{k} w{bits} had{had} M{m}: budget")
            continue
        packed, scales, lut = make_qweight(n, k, bits, "uniform", gen)
        what = reference_weight(packed, scales, lut, None, bits, 1, GROUP, "uniform", n, k)
        nbytes = packed.numel() * 4 + scales.numel() * 2
        pcs = [packed] + [packed.clone() for _ in range(copies_for(nbytes) - 1)]
        x = torch.randn(m, k, generator=gen).to(dtype).cuda()
        signs = (torch.randint(0, 2, (had,), generator=gen) * 2 - 1).float().cuda() if had else torch.ones(1).cuda()
        ref = (rotate_blocks(x.float(), signs, had) if had else x.float()) @ what.t()
        lut32 = lut.float().contiguous()
        res = []
        for spec in specs_for(bits, had, m, stages, **space):
            for sk in splits:
                if sk > 1 and -(-k // spec.block_k) < 2 * sk:
                    continue
                try:
                    y = launch(spec, sk, x, packed, scales, lut32, None, None, signs, n, k)
                    err = relerr(y, ref)
                    us = graph_time_us([lambda p_=p_: launch(spec, sk, x, p_, scales, lut32, None, None, signs, n, k)
                                        for p_ in pcs])
                except Exception as e:  # resources: skipped
                    log(f"  {spec.name()} x{sk}: {type(e).__name__}: {str(e)[:100]}")
                    continue
                res.append((us, spec, sk, err))
                tsv.write(f"{n}x{k}\t{m}\t{bits}\t{had}\t{spec.name()}\t{sk}\t{us:.2f}\t{nbytes / us / 1e6:.3f}\t{err:.2e}\n")
        tsv.flush()
        res.sort(key=lambda r: r[0])
        cand0, sk0 = tune.candidates(base_spec(dtype, bits, 1, GROUP, "uniform", had), m, n, k, x.device)[0]
        cur = [r for r in res if r[1] == cand0 and r[2] == sk0]
        bad = [r for r in res if not r[3] < 1e-2]
        log(f"{n}x{k} M={m} w{bits} had{had}: {len(res)} timed, {len(bad)} BAD; heuristic first candidate "
            f"{cur[0][0]:.1f} us" if cur else f"{n}x{k} M={m} w{bits} had{had}: {len(res)} timed")
        for us, spec, sk, err in res[: args.top]:
            log(f"   {us:8.1f} us {nbytes / us / 1e6:5.2f} TB/s  {spec.name()} x{sk}  err {err:.1e}")
        if res:
            summary.append((f"{n}x{k}", m, bits, had, res[0][0], nbytes / res[0][0] / 1e6, res[0][1].name(), res[0][2]))
        del pcs, what
        torch.cuda.empty_cache()
    tsv.close()
    log("\n| N×K | M | b | had | best µs | TB/s | kernel | split |\n|---|---|---|---|---|---|---|---|")
    for r in summary:
        log(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]:.2f} | {r[6]} | {r[7]} |")


if __name__ == "__main__":
    main()
