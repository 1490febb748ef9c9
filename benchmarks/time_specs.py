"""Time given kernel specs (any variant, any M) on one GPU beside cuBLAS fp16; one command, no tuner.

    python3 benchmarks/time_specs.py CASES.json [--out DIR]

CASES.json (a file or inline JSON) holds [[spec fields, split_k, N, K, M], ...] (spec fields as in
codegen/kernel_spec.py; missing ones take their defaults). Each case packs random codes of the spec's width with
fp16 scales of the spec's group size (bench_kernels.make_qweight's ranges), checks the kernel against the float32
reference (relerr) and times CUDA-graph replays over weight copies past the L2, as bench_kernels.py does; fp16 is
F.linear on the same N x K and M. For questions the tuner's candidate list cannot answer (a tile it does not offer,
channel against group scales, one num_stages against another). Writes DIR/time_specs.tsv; prints a table last.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

from qcomp.codegen.kernel_spec import KernelSpec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import GRAPH_CALLS, copies_for, copy_bandwidth, graph_time_us, log, relerr  # noqa: E402


def load_cases(text: str) -> list[tuple[dict, int, int, int, int]]:
    raw = json.loads(open(text).read() if os.path.exists(text) else text)
    out = []
    for i, case in enumerate(raw):
        if not (isinstance(case, list) and len(case) == 5 and isinstance(case[0], dict)
                and all(isinstance(v, int) and v > 0 for v in case[1:])):
            raise SystemExit(f"case {i} is {case!r}; expected [spec fields, split_k, N, K, M] (positive integers)")
        KernelSpec(**case[0])  # KernelSpecError names a bad field
        out.append(tuple(case))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases")
    ap.add_argument("--out", default=os.environ.get("OUT", "time_specs_out"))
    ap.add_argument("--workers", type=int, default=0,
                    help="compile the cases' kernels first in this many processes (0: each when first timed)")
    args = ap.parse_args(argv)
    cases = load_cases(args.cases)
    if args.workers > 0:
        from qcomp.codegen.precompile import compile_in_pool, job

        jobs = list(dict.fromkeys(
            job(KernelSpec(**f), split, m, n, k, "bfloat16" if f.get("act_dtype") == "bf16" else "float16")
            for f, split, n, k, m in cases))
        r = compile_in_pool(jobs, args.workers)
        log(f"precompiled {r['compiled']}/{r['jobs']} kernels with {r['workers']} processes in {r['seconds']:.0f} s")
    from qcomp.codegen.hadamard_util import rotate_blocks
    from qcomp.codegen.ops import launch, reference_weight
    from qcomp.codegen.packing import pack_codes

    os.makedirs(args.out, exist_ok=True)
    bw = copy_bandwidth()
    log(f"GPU {torch.cuda.get_device_name()} | torch {torch.__version__} | copy {bw:.2f} TB/s | timed CUDA graphs of "
        f">= {GRAPH_CALLS} calls (QCOMP_BENCH_GRAPH_CALLS)")
    gen = torch.Generator().manual_seed(0)
    rows, fp16 = [], {}
    tsv = open(os.path.join(args.out, "time_specs.tsv"), "w")
    tsv.write("kernel\tsplit\tNxK\tM\tus\tfp16_us\tx_fp16\tTBs\tx_copy\trelerr\n")
    for fields, split, n, k, m in cases:
        spec = KernelSpec(**fields)
        g = k if spec.group_size == -1 else spec.group_size
        codes = torch.randint(0, 2 ** spec.code_bits, (n, k // spec.p), dtype=torch.uint8, generator=gen)
        packed = pack_codes(codes, spec.code_bits).cuda()
        scales = ((torch.rand(n, k // g, generator=gen) + 0.5) * 0.02).half().cuda()
        lut = torch.sort(torch.randn(2 ** spec.bits, generator=gen))[0].reshape(-1, 1).repeat(1, spec.p).float().cuda()
        dtype = torch.bfloat16 if spec.act_dtype == "bf16" else torch.float16
        x = torch.randn(m, k, generator=gen).to(dtype).cuda()
        h = spec.had_block  # a fused rotation: random signs, and the reference rotates x as the kernel does
        signs = (torch.randint(0, 2, (h,), generator=gen) * 2 - 1).float().cuda() if h else torch.ones(1, device="cuda")
        xr = rotate_blocks(x.float(), signs, h) if h else x.float()
        if (n, k, m, dtype) not in fp16:
            w16 = (torch.randn(n, k, generator=gen) * 0.02).to(dtype).cuda()
            wc = [w16] + [w16.clone() for _ in range(copies_for(w16.numel() * 2) - 1)]
            fp16[(n, k, m, dtype)] = graph_time_us([lambda w=w: F.linear(x, w) for w in wc])
            del wc, w16
        f16 = fp16[(n, k, m, dtype)]
        what = reference_weight(packed, scales, lut, None, spec.bits, spec.p, spec.group_size, spec.grid, n, k)
        nbytes = packed.numel() * 4 + scales.numel() * 2
        pcs = [packed] + [packed.clone() for _ in range(copies_for(nbytes) - 1)]
        try:
            err = relerr(launch(spec, split, x, packed, scales, lut, None, None, signs, n, k), xr @ what.t())
            us = graph_time_us([lambda p_=p_: launch(spec, split, x, p_, scales, lut, None, None, signs, n, k)
                                for p_ in pcs])
        except Exception as e:  # (resources: a tile too large for this GPU) reported, the others go on
            log(f"{spec.name()} x{split} {n}x{k} M={m}: {type(e).__name__}: {str(e)[:120]}")
            continue
        r = (spec.name(), split, f"{n}x{k}", m, us, f16, f16 / us, nbytes / us / 1e6, nbytes / us / 1e6 / bw, err)
        rows.append(r)
        tsv.write("\t".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + "\n")
        tsv.flush()
        log(f"{r[0]} x{split} {r[2]} M={m}: {us:.1f} us (fp16 {f16:.1f}, {f16 / us:.2f}x) relerr {err:.1e}")
        del pcs, what
        torch.cuda.empty_cache()
    tsv.close()
    log("\n| kernel | split | N×K | M | µs | fp16 µs | × fp16 | relerr |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        log(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.2f} | {r[9]:.1e} |")
    return 0 if all(r[9] < 1e-2 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
