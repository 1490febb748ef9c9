"""A/B timing of generated kernel text: this tree's codegen/render.py against another render.py (for example an
older commit's: `git show REV:codegen/render.py > OLD.py`), on the same specs, split-K counts and data.

    python3 benchmarks/ab_kernels.py CASES.json --old OLD.py [--old-packing OLD_packing.py] [--rounds 2]

CASES.json holds [[spec fields, split_k, N, K], ...] (spec fields as in codegen/kernel_spec.py; missing ones take
their defaults; M = 1). Each kernel is timed as CUDA-graph replays over enough weight copies to exceed L2
(bench_kernels.graph_time_us): a single launch from Python costs 40-60 µs of CPU, so `do_bench` of one small
kernel measures Python, not the GPU. Old and new alternate `--rounds` times; the best median of each is printed
with its relative error against the dequantized float32 reference. Both texts read this tree's packed layout
(codegen/packing.py) unless --old-packing names the packing.py the old text reads (a layout change: the old side
then packs the same codes with it); a text given data of another layout shows up as a large error.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def load_cases(text: str) -> list[tuple[dict, int, int, int]]:
    """Parse and check CASES (a JSON list of [spec fields, split_k, N, K]); errors name the bad entry."""
    from qcomp.codegen.kernel_spec import KernelSpec

    try:
        raw = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"cases are not JSON ({e}); expected [[spec fields, split_k, N, K], ...]") from None
    if not isinstance(raw, list) or not raw:
        raise SystemExit("cases must be a non-empty JSON list of [spec fields, split_k, N, K]")
    out = []
    for i, case in enumerate(raw):
        if not (isinstance(case, list) and len(case) == 4 and isinstance(case[0], dict)
                and all(isinstance(v, int) and v > 0 for v in case[1:])):
            raise SystemExit(f"case {i} is {case!r}; expected [spec fields (an object), split_k, N, K] with positive "
                             "integers")
        spec = KernelSpec(**case[0])  # KernelSpecError names a bad field
        if case[3] % (128 * spec.p):
            raise SystemExit(f"case {i}: K = {case[3]} is not a multiple of the pack tile ({128 * spec.p} weights)")
        out.append((case[0], case[1], case[2], case[3]))
    return out


def _module(path: str, name: str):
    """Import a file as a sibling module of qcomp.codegen (its relative imports read this tree's modules)."""
    spec = importlib.util.spec_from_file_location(f"qcomp.codegen.{name}", path)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "qcomp.codegen"
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", help="a JSON file (or inline JSON) of [[spec fields, split_k, N, K], ...]")
    ap.add_argument("--old", required=True, help="the other render.py")
    ap.add_argument("--old-packing", default=None, help="the packing.py the old text reads (default: this tree's)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    cases = load_cases(Path(args.cases).read_text() if os.path.exists(args.cases) else args.cases)

    import torch

    import qcomp.codegen.render as render
    from bench_kernels import copies_for, graph_time_us, relerr
    from qcomp.codegen.hadamard_util import rotate_blocks
    from qcomp.codegen.kernel_spec import KernelSpec
    from qcomp.codegen.ops import launch, reference_weight
    from qcomp.codegen.packing import pack_codes

    sources = {"old": _module(args.old, "render_ab_old").kernel_source, "new": render.kernel_source}
    packers = {"old": _module(args.old_packing, "packing_ab_old").pack_codes if args.old_packing else pack_codes,
               "new": pack_codes}

    def use(side):
        render.kernel_source = sources[side]
        render._LOADED.clear()
        os.environ["QCOMP_KERNEL_CACHE"] = f"/tmp/qcomp_ab_{side}"

    print(f"{torch.cuda.get_device_name()} | old {args.old} | new {render.__file__}")
    for fields, split, n, k in cases:
        spec = KernelSpec(**fields)
        gen = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 2 ** spec.code_bits, (n, k // spec.p), dtype=torch.uint8, generator=gen)
        packed = pack_codes(codes, spec.code_bits).cuda()
        scales = ((torch.rand(n, k // spec.group_size, generator=gen) + 0.5) * 0.02).half().cuda()
        lut = torch.randn(2 ** spec.code_bits, spec.p, generator=gen).sort(0)[0].cuda()
        signs = (torch.randint(0, 2, (max(spec.had_block, 1),), generator=gen) * 2 - 1).float().cuda()
        x = torch.randn(1, k, generator=gen).to(torch.float16 if spec.act_dtype == "fp16" else torch.bfloat16).cuda()
        w = reference_weight(packed, scales, lut, None, spec.bits, spec.p, spec.group_size, spec.grid, n, k)
        ref = (rotate_blocks(x.float(), signs, spec.had_block) if spec.had_block else x.float()) @ w.t()
        nbytes = packed.numel() * 4 + scales.numel() * 2
        side_packed = {side: packers[side](codes, spec.code_bits).cuda() for side in ("old", "new")}
        side_copies = {side: [(pk.clone(), scales.clone()) for _ in range(copies_for(nbytes))]
                       for side, pk in side_packed.items()}
        best = {}
        for _ in range(args.rounds):
            for side in ("old", "new"):
                use(side)
                copies = side_copies[side]
                try:
                    err = relerr(launch(spec, split, x, side_packed[side], scales, lut, None, None, signs, n, k), ref)
                    fns = [lambda p=p, s=s: launch(spec, split, x, p, s, lut, None, None, signs, n, k)
                           for p, s in copies]
                    us = graph_time_us(fns)
                except Exception as e:  # noqa: BLE001 - one failing text must not hide the other's number
                    best[side] = (float("inf"), f"{type(e).__name__}: {str(e)[:120]}")
                    continue
                if us < best.get(side, (float("inf"),))[0]:
                    best[side] = (us, f"err {err:.0e}")
        line = f"{spec.name():58s} split {split:2d} {n}x{k}:"
        for side in ("old", "new"):
            us, note = best[side]
            line += f" | {side} {us:7.1f} µs {nbytes / us / 1e6 if us != float('inf') else 0:4.2f} TB/s {note}"
        if all(best[s][0] != float("inf") for s in best):
            line += f" | new/old {best['new'][0] / best['old'][0]:.3f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
