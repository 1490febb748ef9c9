"""Run one generated qlinear kernel (a fixed spec and split-K, no autotuning) a few times on random data, for
Nsight Compute to profile; prints its median time and relative error first.

    ncu --set full -k regex:qlinear -s 2 -c 1 python3 benchmarks/ncu_qlinear.py SPEC_JSON --split 16 --profile

SPEC_JSON holds KernelSpec fields (codegen/kernel_spec.py); missing ones take their defaults. Weights are
uniform random codes with group-128 fp16 scales; x is random in the spec's activation dtype.
"""
from __future__ import annotations

import argparse
import json

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", help="KernelSpec fields as JSON")
    ap.add_argument("--n", type=int, default=28672)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--split", type=int, default=1)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--profile", action="store_true", help="skip the timing loop: under ncu, launch 1 + runs only")
    args = ap.parse_args()

    from qcomp.codegen.hadamard_util import rotate_blocks
    from qcomp.codegen.kernel_spec import KernelSpec
    from qcomp.codegen.ops import launch, reference_weight
    from qcomp.codegen.packing import pack_codes

    spec = KernelSpec(**json.loads(args.spec))
    n, k, m = args.n, args.k, args.m
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2 ** spec.code_bits, (n, k // spec.p), dtype=torch.uint8, generator=gen)
    packed = pack_codes(codes.cuda(), spec.code_bits)
    g = spec.group_size if spec.group_size > 0 else k
    scales = ((torch.rand(n, k // g, generator=gen) + 0.5) * 0.02).half().cuda()
    lut = torch.randn(2 ** spec.code_bits, spec.p, generator=gen).sort(0)[0].cuda()
    dt = torch.float16 if spec.act_dtype == "fp16" else torch.bfloat16
    x = torch.randn(m, k, generator=gen).to(dt).cuda()
    signs = (torch.randint(0, 2, (max(spec.had_block, 1),), generator=gen) * 2 - 1).float().cuda()
    offsets = scales.clone() if spec.grid == "uniform_asym" else None
    args_ = (x, packed, scales, lut, offsets, None, signs, n, k)
    y = launch(spec, args.split, *args_)
    w = reference_weight(packed, scales, lut, offsets, spec.bits, spec.p, spec.group_size, spec.grid, n, k)
    xr = rotate_blocks(x.float(), signs, spec.had_block) if spec.had_block else x.float()
    ref = xr @ w.t()
    err = float((y.float() - ref).norm() / ref.norm())
    nbytes = packed.numel() * 4 + scales.numel() * 2
    if args.profile:
        print(f"{spec.name()} split {args.split} {n}x{k} M={m}: rel err {err:.1e}", flush=True)
    else:
        from triton.testing import do_bench

        us = do_bench(lambda: launch(spec, args.split, *args_), warmup=5, rep=20, return_mode="median") * 1e3
        print(f"{spec.name()} split {args.split} {n}x{k} M={m}: {us:.1f} us (do_bench median), "
              f"{nbytes / us / 1e6:.2f} TB/s, rel err {err:.1e}", flush=True)
    for _ in range(args.runs):
        launch(spec, args.split, *args_)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
