"""Check every wgmma (Gluon) spec of a cases file against the float32 reference on small random shapes (CUDA, sm_90):
N and M tails, split-K 1 and 3, a bias, an x view TMA cannot address, outputs poisoned with NaN before each run.
Exit 1 on any error > 1e-2.

    python3 benchmarks/check_wgmma.py [CASES_JSON]  # default: cases/wgmma_tuner_tiles.json (the tuner's tiles)
    python3 benchmarks/check_wgmma.py --graph   # the tuned op eager, under torch.compile and in a CUDA graph
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import relerr  # noqa: E402


def main(argv=None) -> int:
    from qcomp.codegen.kernel_spec import KernelSpec
    from qcomp.codegen.ops import launch, reference_qlinear
    from qcomp.codegen.packing import pack_codes

    args = argv if argv is not None else sys.argv[1:]
    path = args[0] if args else str(Path(__file__).parent / "cases" / "wgmma_tuner_tiles.json")
    specs = sorted({json.dumps(c[0], sort_keys=True) for c in json.load(open(path)) if c[0]["variant"] == "wgmma"})
    gen = torch.Generator().manual_seed(1)
    worst, bad = 0.0, 0
    for text in specs:
        spec = KernelSpec(**json.loads(text))
        for n, k, m, split, bias, view in [(1000, 1024, 37, 1, True, False), (1008, 2048, spec.block_m + 3, 3, False, False),
                                           (2048, 1024, 1, 1, False, False), (512, 1024, 256, 2, True, False),
                                           (512, 1024, 40, 1, False, True)]:
            codes = torch.randint(0, 2 ** spec.bits, (n, k), dtype=torch.uint8, generator=gen)
            packed = pack_codes(codes, spec.bits).cuda()
            g = k if spec.group_size == -1 else spec.group_size
            scales = ((torch.rand(n, k // g, generator=gen) + 0.5) * 0.02).half().cuda()
            x = torch.randn(m, k + 1, generator=gen).half().cuda()[:, 1:] if view else \
                torch.randn(m, k, generator=gen).half().cuda()  # view: a start and rows TMA cannot address
            b = torch.randn(n, generator=gen).half().cuda() if bias else None
            lut = torch.zeros(2 ** spec.bits, 1, device="cuda")
            out = torch.full((m, n), float("nan"), dtype=torch.float16, device="cuda")
            try:
                y = launch(spec, split, x, packed, scales, lut, None, b, None, n, k, out=out)
            except Exception as e:  # (a tile this GPU cannot run: shared memory) reported, the others go on
                print(f"FAIL {spec.name()} n={n} k={k} m={m} split={split}: {type(e).__name__}: {str(e)[:160]}")
                bad += 1
                worst = float("nan")
                continue
            ref = reference_qlinear(x, packed, scales, lut, None, b, None, spec.bits, 1, spec.group_size, "uniform",
                                    n, k, 0)
            err = relerr(y, ref)
            ok = err < 1e-2
            worst = max(worst, err) if ok else float("nan")
            bad += not ok
            if not ok:
                print(f"FAIL {spec.name()} n={n} k={k} m={m} split={split} bias={bias} view={view}: relerr {err:.2e}")
    print(f"check_wgmma: {len(specs)} specs x 5 shapes, {bad} failed, worst relerr {worst:.2e}")
    return 1 if bad else 0


def graph_check() -> int:
    """The tuned op (torch.ops.qcomp.qlinear) at M=64 on 28672x8192 w4 g128, where the H100 tuner picks the wgmma
    tile: eager, under torch.compile(fullgraph) and replayed from a CUDA graph, each against the float32 reference."""
    from qcomp.codegen import tune
    from qcomp.codegen.ops import qlinear, reference_qlinear
    from qcomp.codegen.packing import pack_codes

    n, k, m = 28672, 8192, 64
    gen = torch.Generator().manual_seed(2)
    packed = pack_codes(torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=gen), 4).cuda()
    scales = ((torch.rand(n, k // 128, generator=gen) + 0.5) * 0.02).half().cuda()
    bias = torch.randn(n, generator=gen).half().cuda()
    x = torch.randn(m, k, generator=gen).half().cuda()
    kw = dict(bits=4, p=1, group_size=128, grid="uniform", n=n, k=k)

    def f(x):
        return qlinear(x, packed, scales, None, None, bias, **kw)

    ref = reference_qlinear(x, packed, scales, torch.zeros(16, 1, device="cuda"), None, bias, None, 4, 1, 128,
                            "uniform", n, k, 0)
    eager = f(x)
    picks = [v for key, v in tune._CHOICES.items() if f"|{n}x{k}|" in key and "|m64|" in key]
    compiled = torch.compile(f, fullgraph=True)(x)
    static_x = x.clone()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_y = f(static_x)
    static_x.copy_(x)
    static_y.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    bad = 0
    for what, y in (("eager", eager), ("torch.compile", compiled), ("cuda graph", static_y)):
        err = relerr(y, ref)
        bad += not err < 1e-2
        print(f"graph_check {what}: relerr {err:.2e}")
    print(f"graph_check pick: {picks}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(graph_check() if sys.argv[1:] == ["--graph"] else main())
