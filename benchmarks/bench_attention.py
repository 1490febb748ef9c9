"""Decode attention on a GPU: torch.ops.qcomp.attention (codegen/attention_kernel.py) against torch's
scaled_dot_product_attention, and qcomp.cached_attention (the new row read from k_new / v_new); one command.

    python3 benchmarks/bench_attention.py [--splits 1,2,4,8]

Each row: bf16 q [B, H_kv, R, D] (grouped-query heads as query rows), caches [B, H_kv, S, D], a bool mask of the
positions <= S/2; the largest |error| against float32 torch; µs per call as CUDA-graph replays over 8 cache
copies (codegen.tune.graph_time_us) for torch, qcomp with its default split of the key range, each split in
--splits (QCOMP_ATTN_SPLIT), and cached_attention. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_env import environment  # noqa: E402

SHAPES = [(1, 8, 4, 256, 128), (1, 8, 4, 4096, 128), (16, 8, 4, 256, 128), (1, 8, 4, 2048, 64)]


def main() -> int:
    from qcomp.codegen.attention import attention, kernel_unsupported
    from qcomp.codegen.tune import graph_time_us

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", default="1,2,4,8")
    args = ap.parse_args()
    splits = [s for s in args.splits.split(",") if s]
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")
    print("| B | H_kv x R | S | D | max err | torch µs | qcomp µs | " + " | ".join(f"split {s}" for s in splits)
          + " | cached µs | cached err |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(splits) + "---|---|")
    for B, H, R, S, D in SHAPES:
        q = torch.randn(B, H, R, D, device=dev, dtype=dt)
        caches = [(torch.randn(B, H, S, D, device=dev, dtype=dt), torch.randn(B, H, S, D, device=dev, dtype=dt))
                  for _ in range(8)]
        kn, vn = (torch.randn(B, H, 1, D, device=dev, dtype=dt) for _ in range(2))
        pos = torch.tensor([S // 2], device=dev)
        m = (torch.arange(S, device=dev) <= S // 2).view(1, 1, 1, S)
        assert kernel_unsupported(q, *caches[0], m, 0.0, False, False) is None
        k0, v0 = (t.float() for t in caches[0])
        ref = F.scaled_dot_product_attention(q.float(), k0, v0, attn_mask=m)
        err = (attention(q, *caches[0], attn_mask=m).float() - ref).abs().max().item()
        t_torch = graph_time_us([lambda c=c: F.scaled_dot_product_attention(q, c[0], c[1], attn_mask=m)
                                 for c in caches])
        t_q = graph_time_us([lambda c=c: attention(q, c[0], c[1], attn_mask=m) for c in caches])
        t_split = []
        for s in splits:
            with environment({"QCOMP_ATTN_SPLIT": s}):
                assert (attention(q, *caches[0], attn_mask=m).float() - ref).abs().max().item() < 2e-2
                t_split.append(graph_time_us([lambda c=c: attention(q, c[0], c[1], attn_mask=m) for c in caches]))
        refc = F.scaled_dot_product_attention(q.float(), k0.index_copy(2, pos, kn.float()),
                                              v0.index_copy(2, pos, vn.float()), attn_mask=m)
        errc = (torch.ops.qcomp.cached_attention(q, *caches[0], kn, vn, pos, m, None).float() - refc).abs().max().item()
        t_c = graph_time_us([lambda c=c: torch.ops.qcomp.cached_attention(q, c[0], c[1], kn, vn, pos, m, None)
                             for c in caches])
        print(f"| {B} | {H} x {R} | {S} | {D} | {err:.1e} | {t_torch:.2f} | {t_q:.2f} | "
              + " | ".join(f"{t:.2f}" for t in t_split) + f" | {t_c:.2f} | {errc:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
