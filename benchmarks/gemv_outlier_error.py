"""Relative error of the half2 GEMV's two code paths (magic-1024 and fp16 subnormals, codegen/render.py
HALF2_SUBNORMAL) against the float32 reference when x has outlier columns, with and without a fused Hadamard; and of
the kernel that makes x's operands once per program with a scale per K step (x_once, or had_once with a rotation:
subnormal codes, the default path). Runs the generated kernels in the CPU interpreter (no GPU needed, a few minutes):

    python3 benchmarks/gemv_outlier_error.py [--n 64] [--k 1024]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--k", type=int, default=1024)
    args = ap.parse_args(argv)
    import test_codegen_kernels as T  # the tests' case builder and reference

    import qcomp.codegen.render as render
    from qcomp.codegen.kernel_spec import KernelSpec

    n, k = args.n, args.k
    print("bits  outlier  had   magic    subnormal  once (step scales)")
    for bits in (2, 4):
        for factor in (1, 30, 300, 3000):
            for had in (0, 128):
                errs = []
                for sub, once in ((False, False), (True, False), (True, True)):
                    render.HALF2_SUBNORMAL = sub
                    render.SUBNORMAL_WITH_HADAMARD = sub and not once  # (off by default: this is why)
                    render._LOADED.clear()
                    d = T.make_case(bits, "uniform", 1, 128, had, 1, n, k, seed=5, bias=False)
                    x = d["x"].float()
                    x[:, 7] *= factor
                    x[:, k // 2 + 88] *= factor
                    d["x"] = x.half()
                    spec = KernelSpec(bits=bits, grid="uniform", group_size=128, had_block=had, variant="gemv",
                                      block_m=1, block_n=16, block_k=128, num_stages=2,
                                      **({"had_once" if had else "x_once": True} if once else {}))
                    y = T.run_kernel(d, spec, 1, n, k)
                    ref = T.reference(d, bits, 1, 128, "uniform", n, k, had)
                    errs.append(float((y.float() - ref.float()).norm() / ref.float().norm()))
                print(f"w{bits:<4} x{factor:<7} {had:<4} {errs[0]:.2e} {errs[1]:.2e} {errs[2]:.2e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
