"""Choose a KernelSpec (tiles, variant) and split-K for one call: candidates, timing, and the choice cache.

Choices are cached per (GPU name, M bucket, N, K, base spec) in memory and in
<kernel cache>/autotune.json. Timing happens only on CUDA, outside stream capture, and only when
QCOMP_AUTOTUNE is not "0"; otherwise (CPU interpreter, CUDA-graph capture) the first candidate, a
heuristic choice, is used. Warm up (call once) before capturing a CUDA graph so that the tuned choice is
cached by then.

Timing (QCOMP_TUNE_TIMER): "graph" (default) times CUDA-graph replays of TUNE_REPS launches, each after a read of
64 MB that evicts the weights from L2 (as in a decode step, where no weight is reused), minus the same graph of reads
alone; "do_bench" times launches one by one with triton's do_bench. A launch from Python costs 40-60 µs of CPU, more
than most decode kernels run, and do_bench partly measures it. H200, session 15: the Llama-3-8B decode step under
torch.compile ran 3.762 ms with graph-tuned kernels against 3.765 ms with do_bench-tuned ones (session 14); for
28672x4096 w3 + had128 the graph tuner picked a kernel that ran 26.8 µs where the do_bench pick ran 39.4 µs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import threading

import torch

from .kernel_spec import ONCE_SCRATCH_MAX_BYTES, KernelSpec, KernelSpecError, once_scratch_floats
from .render import cache_dir, use_half2

_CHOICES: dict[str, tuple[dict, int]] = {}
_LOCK = threading.Lock()
_FILE_LOADED = False

# gemv tiles (n, k, warps), best first: small programs, many of them. From benchmarks/sweep_gemv.py on the H100
# (28672x8192 and 8192x28672, b in 2, 3, 4, 8): block_k 128 everywhere (larger K steps break the one-scale-per-
# step fast path at group 128 and were 2x slower); the best tiles sit within 5 % of each other per width.
GEMV_TILES = [(64, 128, 2), (128, 128, 2), (256, 128, 4), (128, 128, 8), (32, 128, 2)]
GEMV_SPLITS = (16, 8, 4)  # split-K counts tried per tile (sweep: 8-16 beat the old 1-2 by 20-40 %)
DOT_SMALL_M = [(128, 128, 4, 4), (64, 128, 4, 4), (64, 256, 4, 3), (128, 256, 4, 3)]  # gemm, 4 < M <= 16: (n, k, warps, stages)
# 4 < M <= 16, weights in registers only (KernelSpec.a_regs): a wider tile halves the loop overhead per weight (sm_90
# static counts, triton 3.6: 2.6 instead of 3.0 instructions per weight at w4)
A_REGS_SMALL_M = [(256, 128, 4, 4)]
DOT_SPLITS = (2, 4, 8)  # split-K counts tried besides the heuristic one for tensor-core tiles (few programs per SM)
# gemm (M > 16) per M bucket: (m, n, k, warps, stages); acc^T is [n, m]: n feeds the wgmma M dimension
GEMM_TILES = {
    32: [(32, 128, 128, 4, 4), (32, 64, 256, 4, 4), (32, 128, 256, 8, 3)],
    64: [(64, 128, 128, 4, 4), (64, 128, 256, 8, 3), (64, 64, 128, 4, 4), (64, 256, 128, 8, 3)],
    128: [(128, 128, 128, 8, 3), (64, 128, 128, 4, 4), (128, 256, 128, 8, 3), (128, 64, 128, 4, 4)],
    256: [(128, 128, 128, 8, 3), (256, 128, 128, 8, 2), (128, 256, 128, 8, 3), (64, 256, 128, 8, 3),
          (128, 128, 128, 4, 4)],
}


# the Gluon wgmma tile (KernelSpec variant "wgmma", gemm_wgmma.py) per M bucket: (m, n, warps, stages, loop, per_sm),
# n = 16 * warps; loop: WGMMA_LOOPS' key ("regs": words in registers and scales into A, _loop_regs; "tma": the TMA
# loop, the step's sum scaled; "tma_sa": the TMA loop with scales into A); per_sm 0: a data-parallel grid (split-K
# counts from _dot_splits), else stream-K with that many programs per SM (KernelSpec.stream_k).
# H100, session 28 (benchmarks/results/time_specs_v28_wgmma_h100.tsv, w4 g128): M=64 m64 n64 108.8 / 106.0 us
# (split 4 at 8192x28672) against the registers tile's 114.3 / 122.6; M=256 m128 n128 252.2 and m256 n128 split 2
# 279.7 against 296.6 / 297.4. More stages or 16 warps were slower (fewer programs per SM), and so were two m64 row
# blocks per warp group (n = 32 * warps; session 30, time_specs_v30_wgmma_two_blocks_h100.tsv: m64 n128 4 warps
# 121.1 vs 107.0 at M=64, m128 n256 8 warps 328.5 vs 249.5 at M=256). Session 30, tiles of <= 64 rows taking their
# words through TMA (gemm_wgmma._loop_tma; time_specs_v30_wgmma_tma_words_h100.tsv): m64 n64 s2 80.2 / 81.8 (split 4)
# where s3 ran 113.4 (its shared memory leaves fewer programs per SM), m64 n128 8 warps s2 83.2 / 90.7.
# Session 35, the TMA loop with scales into A (128 registers at m128 n128 s2: two programs per SM;
# time_specs_v35_wgmma_sa*_h100.tsv): M=256 206.3 / 203.5 us (split 2) against 253.6 / 257.9, M=128 106.4 against
# 133.6, w8 M=256 316.6 against 477.4, 14336x4096 53.6 against 64.7; at M=64 m64 n64 level (79.5 / 79.3); m256 n128
# 239.6; stream-K over it slower (292.6 / 293.5 at 2 per SM, 127.6 / 124.5 at M=64), so the tuner offers none.
# Session 36, "tma_sa_rw": that loop with rolling_wait (a wait per slot for the step before's slot, no drain per
# step; time_specs_v36_wgmma_rolling_wait_h100.tsv): m256 n128 s3 (one program per SM) 188.1 / 186.9 us (split 2)
# against sa m128 n128's 207.8 / 207.6 and fp16's 200.4 / 188.4; w8 m128 n128 s3 270.9 against 317.0 (w8 m256 s3
# does not fit shared memory); at M=128 rw m128 s3 124.8 against 107.0, at M=64 rw m64 n64 s3 104.3 against 83.3.
WGMMA_LOOPS = {"regs": {"a_regs": True}, "tma": {}, "tma_sa": {"a_scales": True},
               "tma_sa_rw": {"a_scales": True, "rolling_wait": True}}
WGMMA_TILES = {
    32: [(32, 64, 4, 2, "tma", 0), (32, 64, 4, 3, "tma", 0)],
    64: [(64, 64, 4, 2, "tma", 0), (64, 128, 8, 2, "tma", 0)],
    128: [(128, 128, 8, 2, "tma_sa", 0), (128, 128, 8, 3, "regs", 0), (128, 128, 8, 2, "tma", 0),
          (64, 64, 4, 2, "tma", 0)],
    256: [(256, 128, 8, 3, "tma_sa_rw", 0), (128, 128, 8, 2, "tma_sa", 0), (128, 128, 8, 3, "tma_sa_rw", 0),
          (128, 128, 8, 3, "regs", 0), (128, 128, 8, 3, "tma", 0),
          (128, 128, 8, 2, "tma", 0),
          (256, 128, 8, 3, "regs", 0), (256, 128, 8, 2, "regs", 0)],
}


def gemv_x_ahead(base: KernelSpec, block_m: int) -> bool:
    """KernelSpec.x_ahead for a gemv tile: on for one activation row of 2-bit uniform codes, where it was 1-5 %
    faster on the H100 (session 32, 2 rounds x 2 shapes, results/time_specs_v32_gemv_loads_ahead_r*_h100.tsv); w3
    was 17-26 % slower with it and w4 level, and other grids, rotations and row counts were not timed."""
    return (block_m == 1 and base.code_bits == 2 and base.grid == "uniform"
            and not (base.had_block or base.x_glu or base.x_norm))


GEMV_CP_ASYNC_STAGES = 4  # the cp_async twin of a gemv tile: 3 K steps in flight in shared memory


def gemv_cp_async_setting(device) -> bool:
    """Whether the tuner also tries each gemv tile with cp_async (KernelSpec.cp_async): only with
    QCOMP_GEMV_CP_ASYNC=1, and only on CUDA (the CPU interpreter runs the same text either way). Off by default: on
    the H200 (session 37, results/time_specs_v37_gemv_cp_async_h200.tsv) the cp.async pipeline ran 4-24 % slower
    than the register prefetch at every width but w8 (1.5 % faster, within noise) and made tuning twice as long."""
    return _opt_in("QCOMP_GEMV_CP_ASYNC", device)


def _opt_in(var: str, device) -> bool:
    """An off-by-default candidate family: True where the environment variable `var` is 1 and `device` is CUDA (the
    CPU interpreter runs the same text either way); 0 or unset: False; any other value: ValueError naming the choices."""
    raw = os.environ.get(var, "").strip()
    if raw not in ("", "0", "1"):
        raise ValueError(f"{var}={raw!r}: use 1 (on) or 0 (off, the default)")
    return raw == "1" and _on_cuda(device)


def gemv_cp_async_twin(spec: KernelSpec) -> KernelSpec:
    """A gemv tile's cp_async twin: GEMV_CP_ASYNC_STAGES stages, no x_ahead (it belongs to the register prefetch)."""
    return dataclasses.replace(spec, cp_async=True, num_stages=GEMV_CP_ASYNC_STAGES, x_ahead=False)


def gemv_x_once(base: KernelSpec) -> bool:
    """Whether the tuner tries x_once twins: unrotated 1- and 2-bit codes, no norm. On the H100 (session 38,
    results/time_specs_v38_x_once*_h100.tsv) x_once ran w1 9 % faster (32.9 -> 30.0 µs), w2 level (31.8 -> 33.5 and
    30.2 -> 29.6 at the picks), and w3 / w4 10-35 % slower: a short program's prologue costs more than the loop saves."""
    return base.code_bits <= 2 and not (base.had_block or base.x_norm)


GEMV_TMA_STAGES = 4  # the tma_words twin of an 8-bit gemv tile: 3 K steps of words in flight in shared memory


def gemv_tma_words(base: KernelSpec, m: int) -> bool:
    """Whether the tuner tries tma_words twins (gemv_tma_twin): one row of 8-bit codes only. On the H100 (session 39,
    results/time_specs_v39_tma_words_h100.tsv) the words' TMA ring ran w8 2-3 % faster (91.2 -> 89.0 µs at
    28672x8192 n32, 93.5 -> 90.9 at 8192x28672 n128 8 warps) and w2 / w4 1-27 % slower (their loops pay the ring's
    barrier and mbarrier wait per K step; at 8 bits a step moves twice the bytes). The tuned w8 layers then picked
    twins at both shapes: 89.8 / 88.9 µs (session 40, results/bench_kernels_v40_m1_w8_h100.tsv)."""
    return m == 1 and base.code_bits == 8


def gemv_tma_twin(spec: KernelSpec) -> KernelSpec | None:
    """A gemv tile's tma_words twin (GEMV_TMA_STAGES stages), or None where the tile cannot take it."""
    try:
        return dataclasses.replace(spec, tma_words=True, num_stages=GEMV_TMA_STAGES)
    except KernelSpecError:  # (not one pack tile per K step, or another flag it does not take)
        return None


def gemv_row_acc_setting(device) -> bool:
    """Whether the tuner also tries each M=1 gemv tile with one accumulator per row (KernelSpec.row_acc: fewer
    registers, so more programs per SM: w4 n64 96 -> 80, w8 n32 95 -> 72 on sm_90): only with QCOMP_GEMV_ROW_ACC=1 and
    only on CUDA, until it is timed (built in session 40, when no device time was left: NOTES_kernels.md)."""
    return _opt_in("QCOMP_GEMV_ROW_ACC", device)


def _row_acc_twins(cands: list[tuple[KernelSpec, int]], m: int, device) -> list[tuple[KernelSpec, int]]:
    """Per gemv_row_acc_setting, each gemv candidate at M=1 followed by its row_acc twin."""
    if m != 1 or not gemv_row_acc_setting(device):
        return cands
    out = []
    for spec, split in cands:
        out.append((spec, split))
        if spec.variant == "gemv":
            out.append((dataclasses.replace(spec, row_acc=True), split))
    return out


def _once_twin(spec: KernelSpec, flag: str, m: int, n: int, k: int, split: int) -> KernelSpec | None:
    """A gemv tile's had_once / x_once twin (flag), or None where the tile is off the half2 path or the twin's scratch
    would pass ONCE_SCRATCH_MAX_BYTES (each N tile keeps its own copy of the operands: MBs at M=1, GBs for the
    16-row tiles of the widest layers). The twin loads the operands a K step ahead (x_ahead): on the H100 had_once w2
    n128 ran 39.1 -> 34.5 / 39.6 -> 32.2 µs with it, w4 61.5 -> 60.9, and x_once w4 n32 68.9 -> 64.8 (session 38)."""
    if not use_half2(spec):
        return None
    twin = dataclasses.replace(spec, x_ahead=True, **{flag: True})
    return twin if 4 * once_scratch_floats(twin, m, n, k, split) <= ONCE_SCRATCH_MAX_BYTES else None


def wgmma_setting(device) -> bool:
    """Whether the tuner tries the Gluon wgmma tile: on an sm_90 GPU (the H100 / H200: wgmma exists only there)
    unless QCOMP_WGMMA=0; never elsewhere (the CPU interpreter does not run Gluon)."""
    raw = os.environ.get("QCOMP_WGMMA", "").strip()
    if raw not in ("", "0", "1"):
        raise ValueError(f"QCOMP_WGMMA={raw!r}: use 0 (off) or 1 (on; the default on sm_90 GPUs)")
    if raw == "0" or not (_on_cuda(device) and torch.cuda.is_available()):
        return False
    return torch.cuda.get_device_capability(device) == (9, 0)


def _wgmma_candidates(base: KernelSpec, m: int, n: int, k: int, sms: int) -> list[tuple[KernelSpec, int]]:
    """WGMMA_TILES for this M bucket where the spec and the shape take them (K a multiple of 128)."""
    if k % 128:
        return []
    out = []
    for bm, bn, warps, stages, loop, per_sm in WGMMA_TILES.get(min(256, max(32, m_bucket(m))), []):
        fields = {"a_regs": False, "a_scales": False, "rolling_wait": False, **WGMMA_LOOPS[loop],
                  "stream_k": per_sm > 0}
        try:
            spec = dataclasses.replace(base, variant="wgmma", block_m=bm, block_n=bn, block_k=128,
                                       num_warps=warps, num_stages=stages, **fields)
        except KernelSpecError:  # not a width, grid or group the wgmma tile takes, or a tile too big at this width
            continue
        splits = [per_sm] if per_sm else _dot_splits(-(-m // bm) * -(-n // spec.block_n), k // 128, sms)
        out += [(spec, s) for s in splits]
    return out


def m_bucket(m: int) -> int:
    return 1 if m <= 1 else min(2 ** math.ceil(math.log2(m)), 4096)


def _on_cuda(device) -> bool:
    return isinstance(device, torch.device) and device.type == "cuda"


def sm_count(device) -> int:
    """The SMs of a CUDA device (132, an H100's, elsewhere)."""
    if _on_cuda(device) and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def _fit_k(bk: int, base: KernelSpec, k: int) -> int:
    """Scale a tile's K (given for p = 1) to whole pack tiles, the Hadamard block and the row length."""
    bk = max(bk * base.p, base.had_block or 1, 128 * base.p)
    while bk > 128 * base.p and bk // 2 >= k and bk // 2 >= (base.had_block or 1):
        bk //= 2  # no tile much larger than the whole row
    return bk


def _split(progs: int, steps: int, sms: int) -> int:
    split = 1
    while progs * split < 2 * sms and split * 2 <= max(1, steps // 2):
        split *= 2
    return split


def gemv_splits_setting() -> tuple[int, ...]:
    """The split-K counts the tuner tries for gemv tiles: GEMV_SPLITS, or QCOMP_GEMV_SPLITS (comma-separated counts
    >= 2, e.g. 32,24,16,12,8,6,4,3) to explore others; choices made under an override are cached apart (_key)."""
    raw = os.environ.get("QCOMP_GEMV_SPLITS", "").strip()
    if not raw:
        return GEMV_SPLITS
    try:
        splits = tuple(int(v) for v in raw.split(","))
    except ValueError:
        splits = ()
    if not splits or min(splits) < 2:
        raise ValueError(f"QCOMP_GEMV_SPLITS={raw!r}: give comma-separated split-K counts >= 2, e.g. 32,16,8,4 "
                         "(unset it for the default (16, 8, 4))")
    return splits


def _gemv_splits(progs: int, steps: int, sms: int) -> list[int]:
    """Split-K counts to try for a gemv tile: gemv_splits_setting() counts that leave each program >= 2 K steps, and
    1 where the tiles alone fill the GPU several times over or K is short; never empty."""
    out = [s for s in gemv_splits_setting() if 2 * s <= steps]
    if progs >= 4 * sms or not out:
        out.append(1)
    return out


def _dot_splits(progs: int, steps: int, sms: int) -> list[int]:
    """Split-K counts for a tensor-core tile: the heuristic one first, then DOT_SPLITS where the tiles alone do not
    fill the GPU twice over and each program keeps >= 4 K steps."""
    first = _split(progs, steps, sms) if progs < sms else 1
    return [first] + [s for s in DOT_SPLITS if s != first and progs < 2 * sms and 4 * s <= steps]


def candidates(base: KernelSpec, m: int, n: int, k: int, device=None) -> list[tuple[KernelSpec, int]]:
    """[(spec, split_k)], heuristic choice first. M <= 16: the gemv variant (and, for M > 4, tensor-core
    tiles of 16 rows); M > 16: gemm tiles (the caller has rotated x already)."""
    out = []
    sms = sm_count(device)
    if m <= 16:
        dots = []
        if m > 4 and not (base.had_block or base.x_glu or base.x_norm):  # (ops.py rotates x, and applies
            # silu(gate) * up or the norm, apart above FUSED_HADAMARD_MAX_M)
            regs_only = [(t, True) for t in A_REGS_SMALL_M] if a_regs_setting(device) != "0" else []
            for (bn, bk, warps, stages), a_regs in [(t, False) for t in DOT_SMALL_M] + regs_only:
                try:
                    spec = dataclasses.replace(base, variant="gemm", block_m=16, block_n=bn, block_k=_fit_k(bk, base, k),
                                               num_warps=warps, num_stages=stages, group_m=1, a_regs=a_regs)
                except KernelSpecError:  # (a_regs) not a width, grid or group the registers path takes
                    if not a_regs:
                        raise
                    continue
                dots += [(spec, s) for s in _dot_splits(-(-n // bn), -(-k // spec.block_k), sms)]
        # on a GPU only the tensor-core tiles of 16 rows where they apply: they won every M=16 row of the H100
        # benchmark (the 16-row gemv ~10x slower), and an 8- or 16-row gemv takes 16-70 s to compile for sm_90
        # against 0.4-4.3 s for a tensor-core tile (session 20: batch-16 tuning spent 329 s compiling them). The CPU
        # interpreter keeps the gemv first (its tl.dot is slow, and wrong for bf16)
        if not (dots and _on_cuda(device)):
            bm = m_bucket(m)
            cpa = gemv_cp_async_setting(device)  # each tile's cp_async twin too (off by default)
            for bn, bk, warps in GEMV_TILES:
                bn = max(16, bn // max(1, bm // 2))  # fewer rows per program as the accumulator sets multiply
                bk = _fit_k(bk, base, k)
                spec = dataclasses.replace(base, variant="gemv", block_m=bm, block_n=bn, block_k=bk,
                                           num_warps=warps, num_stages=2, x_ahead=gemv_x_ahead(base, bm))
                for split in _gemv_splits(-(-n // bn) * -(-m // bm), -(-k // bk), sms):
                    out.append((spec, split))
                    if cpa:  # the K loop's loads copied ahead by cp.async, no registers
                        out.append((gemv_cp_async_twin(spec), split))
                    tma = gemv_tma_twin(spec) if gemv_tma_words(base, m) else None
                    if tma:  # the words by TMA into a shared-memory ring (kernel_spec.tma_words)
                        out.append((tma, split))
                    once = _once_twin(spec, "x_once", m, n, k, split) if gemv_x_once(base) else None
                    if once:  # x's operands made once per program (kernel_spec.x_once)
                        out.append((once, split))
                    if base.had_block:  # the rotated x through a scratch row (kernel_spec.had_scratch): fewer
                        # instructions, one more L2 trip
                        out.append((dataclasses.replace(spec, had_scratch=True), split))
                        once = _once_twin(spec, "had_once", m, n, k, split) if not base.x_norm else None
                        if once:  # rotated once per program (kernel_spec.had_once)
                            out.append((once, split))
                            if cpa:
                                out.append((gemv_cp_async_twin(once), split))
        out += dots
    else:
        if base.had_block or base.x_glu or base.x_norm:
            raise ValueError("M > 16 takes no fused Hadamard, glu or norm: rotate x / apply silu(gate) * up / the "
                             "norm first (ops.triton_qlinear does)")
        for bm, bn, bk, warps, stages in GEMM_TILES[min(256, max(32, m_bucket(m)))]:
            spec = dataclasses.replace(base, variant="gemm", block_m=bm, block_n=bn,
                                       block_k=_fit_k(bk, base, k), num_warps=warps, num_stages=stages)
            progs = -(-m // bm) * -(-n // bn)
            out += [(spec, s) for s in _dot_splits(progs, -(-k // spec.block_k), sms)]
    out = _row_acc_twins(_a_regs_twins(out, device), m, device)
    if m > 16 and wgmma_setting(device):
        out += _wgmma_candidates(base, m, n, k, sms)
    seen, uniq = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq


def _a_regs_default(device) -> str:
    return "both" if _on_cuda(device) else "0"


def a_regs_setting(device) -> str:
    """QCOMP_A_REGS: "0" tensor-core tiles keep the dequantized weights in shared memory; "1" every tile that may
    (KernelSpec.a_regs: uniform grid, 1/2/4/8-bit codes, fp16) keeps them in registers instead; "both" tries each.
    Default: "both" on CUDA, "0" elsewhere (the CPU interpreter's candidate list stays short)."""
    return _twin_setting("QCOMP_A_REGS", device)


def _twin_setting(var: str, device) -> str:
    """The environment variable `var` as "0", "1" or "both"; unset: _a_regs_default(device)."""
    raw = os.environ.get(var, "").strip()
    if raw == "":
        return _a_regs_default(device)
    if raw not in ("0", "1", "both"):
        raise ValueError(f"{var}={raw!r}: use 0, 1 or both (unset: both on CUDA)")
    return raw


def a_scales_setting(device) -> str:
    """QCOMP_A_SCALES, for the tiles that keep their weights in registers (KernelSpec.a_regs) with group scales:
    "0" scales multiply each K step's partial sum; "1" they multiply the weights in A (KernelSpec.a_scales);
    "both" tries each. Default: as a_regs_setting's default."""
    return _twin_setting("QCOMP_A_SCALES", device)


# scales in A (KernelSpec.a_scales) only for tiles of this many activation rows or more. H100, 28672x8192, w4
# (benchmarks/results/time_specs_v24_scales_in_a_h100.tsv): M=16 (m16 n256) 70.2 -> 99.3 us, M=64 mixed (m64 n128
# 114.2 -> 126.4, at 8192x28672 split 2 124.5 -> 121.3), M=128 (m128 n128) 210.4 -> 181.0, M=256 (m128 n256)
# 470.2 -> 295.2: the product per weight costs more than the chained dots save until M reaches ~64
A_SCALES_MIN_BLOCK_M = 64


def _twins(cands: list[tuple[KernelSpec, int]], field: str, how: str, min_block_m: int = 1
           ) -> list[tuple[KernelSpec, int]]:
    """Each candidate of >= min_block_m rows that may set `field`, with (how == "both") or replaced by ("1") that
    twin right after it."""
    if how == "0":
        return cands
    out = []
    for spec, split in cands:
        twin = None
        if spec.variant == "gemm" and not getattr(spec, field) and spec.block_m >= min_block_m:
            try:
                twin = dataclasses.replace(spec, **{field: True})
            except KernelSpecError:  # not a width, grid, group or tile that takes it
                pass
        if twin is None or how == "both":
            out.append((spec, split))
        if twin is not None:
            out.append((twin, split))
    return out


def _a_regs_twins(cands: list[tuple[KernelSpec, int]], device) -> list[tuple[KernelSpec, int]]:
    """Per a_regs_setting, each tensor-core candidate that may keep its weights in registers with or replaced by
    that twin (A_REGS_SMALL_M tiles are their own twin); then, per a_scales_setting, each such tile of >=
    A_SCALES_MIN_BLOCK_M rows with group scales with or replaced by its scales-in-A twin."""
    if a_regs_setting(device) == "0":
        return cands
    return _twins(_twins(cands, "a_regs", a_regs_setting(device)), "a_scales", a_scales_setting(device),
                  A_SCALES_MIN_BLOCK_M)


def _key(base: KernelSpec, m: int, n: int, k: int, device) -> str:
    gpu = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else "cpu"
    splits = gemv_splits_setting()
    tried = "" if splits == GEMV_SPLITS else "|splits " + ",".join(map(str, splits))  # picks from other candidates
    a_regs = a_regs_setting(device)
    tried += "" if a_regs == _a_regs_default(device) else f"|a_regs {a_regs}"
    a_scales = a_scales_setting(device)
    tried += "" if a_scales == _a_regs_default(device) else f"|a_scales {a_scales}"
    # (choices made before the rolling-wait tiles joined WGMMA_TILES, session 36, are tuned again)
    tried += "|wgmma36" if wgmma_setting(device) else ""
    # (fused rotations at M <= 16 chosen before had_once joined the gemv candidates, session 37, are tuned again;
    # choices among the cp_async twins, QCOMP_GEMV_CP_ASYNC=1, are kept apart)
    had = "|had38" if base.had_block and m <= 16 else ""  # (had_once took step scales and subnormal codes, session 38)
    # (unrotated 1- and 2-bit choices at M <= 16 made before the x_once twins joined, session 38, are tuned again)
    had += "|xo38" if m <= 16 and gemv_x_once(base) else ""
    # (8-bit choices for one row made before the tma_words twins joined, session 39, are tuned again)
    had += "|tma39" if gemv_tma_words(base, m) else ""
    tried += "|cp_async" if m <= 16 and gemv_cp_async_setting(device) else ""
    tried += "|row_acc" if m == 1 and gemv_row_acc_setting(device) else ""  # (choices among the row_acc twins apart)
    return f"{gpu}|m{m_bucket(m)}|{n}x{k}|{base.to_json()}{had}{tried}"


def _file():
    return cache_dir() / "autotune.json"


def _load_file():
    global _FILE_LOADED
    if _FILE_LOADED:
        return
    _FILE_LOADED = True
    try:
        for key, (d, s) in json.loads(_file().read_text()).items():
            _CHOICES.setdefault(key, (d, s))
    except (OSError, ValueError):
        pass


def _save_file():
    tmp = _file().with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(_CHOICES, indent=1, sort_keys=True))
    os.replace(tmp, _file())


TUNE_REPS = 8  # launches per timed graph
_FLUSH: dict[str, torch.Tensor] = {}
_SIDE: dict[str, torch.cuda.Stream] = {}  # one warm-up stream per device (split-K counters are kept per stream)


def _flush_buffer(device) -> torch.Tensor:
    """64 MB on `device` (more than the L2 of an H100 or H200), read (summed) before each timed launch: the L2 then
    holds clean lines, as after the weight reads of the previous layer in a decode step (a write would leave dirty
    lines whose write-back the timed kernel would pay)."""
    key = str(device)
    if key not in _FLUSH:
        _FLUSH[key] = torch.zeros(16 << 20, dtype=torch.float32, device=device)
    return _FLUSH[key]


def graph_time_us(fns, replays: int = 15, min_calls: int = 1) -> float:
    """Median µs per call of CUDA-graph replays of the calls fns (captured in order; no Python between them). The
    tuner passes one call TUNE_REPS times; the benchmarks one call per weight copy (copies past L2), cycled until the
    graph holds at least min_calls calls: a replay's own cost (the host's graph launch, which the GPU waits for after
    the start event) is then shared by that many calls instead of the 2-3 copies of a large weight."""
    import statistics

    if min_calls < 1:
        raise ValueError(f"min_calls must be >= 1, got {min_calls}")
    fns = list(fns)
    captured = fns * -(-min_calls // len(fns))

    dev = torch.cuda.current_device()
    if str(dev) not in _SIDE:
        _SIDE[str(dev)] = torch.cuda.Stream(dev)
    side = _SIDE[str(dev)]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns:  # allocations and lazy state outside the capture
            f()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in captured:
            f()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(captured))
    del g
    return statistics.median(times)


def _timer(device):
    """fn -> µs per call, by QCOMP_TUNE_TIMER (module docstring)."""
    how = os.environ.get("QCOMP_TUNE_TIMER", "graph")
    if how == "graph":
        flush = _flush_buffer(device)
        base_us = graph_time_us([flush.sum] * TUNE_REPS, replays=5)  # the evicting reads alone
        return lambda fn: graph_time_us([lambda: (flush.sum(), fn())] * TUNE_REPS, replays=5) - base_us
    if how != "do_bench":
        raise ValueError(f"QCOMP_TUNE_TIMER={how!r}: use 'graph' (default) or 'do_bench'")
    from triton.testing import do_bench

    return lambda fn: do_bench(fn, warmup=1, rep=4, return_mode="median") * 1e3


# per-process memo of settled choices (a _CHOICES hit or a tuning result) and of untuned defaults, keyed by
# (base, M bucket, N, K, device): a call that finds its choice here skips the candidate list and the JSON key,
# ~0.2 ms of Python per qlinear call otherwise
_SETTLED: dict[tuple, tuple[KernelSpec, int]] = {}
_DEFAULTS: dict[tuple, tuple[KernelSpec, int]] = {}


TUNE_AGREE_RELERR = 3e-2  # a candidate whose output differs more from the first's (relative norm) is not taken


def time_candidates(cands, run, timer) -> tuple[tuple[KernelSpec, int], float]:
    """The fastest of cands [(spec, split_k)] by timer(fn) -> µs, and its time (inf: none could be timed).
    `run(spec, split_k)` launches one and returns its output. Every candidate's output on the layer's own inputs is
    checked against the first candidate that runs (the heuristic choice, the untuned default): one that differs by
    more than TUNE_AGREE_RELERR (rounding of the paths differs by ~1e-3), or is not finite where the first is, is a
    wrong kernel; it is skipped with a warning and never chosen."""
    best, best_t, ref, ref_name, ref_norm = cands[0], float("inf"), None, "", None
    for spec, split in cands:
        try:
            y = run(spec, split).float()  # compiles outside any capture; a candidate out of resources fails here
            if ref is None:
                ref, ref_name = y, f"{spec.name()} split {split}"
                # (inputs with inf or NaN: nothing to compare against)
                ref_norm = ref.norm().clamp_min(1e-30) if bool(torch.isfinite(ref).all()) else None
            elif ref_norm is not None:
                err = float((y - ref).norm() / ref_norm)
                if not err <= TUNE_AGREE_RELERR:  # (NaN: not finite)
                    import warnings

                    warnings.warn(f"qcomp.tune: {spec.name()} split {split} gives another result than {ref_name} "
                                  f"on these inputs (relative difference {err:.2e}): skipped; please report it",
                                  RuntimeWarning, stacklevel=3)
                    continue
            t = timer(lambda: run(spec, split))
        except Exception as e:  # a candidate that does not compile (resources) is skipped, not fatal
            if os.environ.get("QCOMP_TUNE_VERBOSE"):
                print(f"qcomp.tune: {spec.name()} split {split} failed: {type(e).__name__}: {e}")
            continue
        if t < best_t:
            best, best_t = (spec, split), t
    return best, best_t


def choose(base: KernelSpec, m: int, n: int, k: int, device, run) -> tuple[KernelSpec, int]:
    """Pick (spec, split_k). `run(spec, split_k)` launches the kernel once (used for timing)."""
    memo = (base, m_bucket(m), n, k, str(device))
    got = _SETTLED.get(memo)
    if got is not None:
        return got
    tune = (
        device.type == "cuda"
        and os.environ.get("QCOMP_AUTOTUNE", "1") != "0"
        and not torch.cuda.is_current_stream_capturing()
    )
    if not tune and memo in _DEFAULTS:
        return _DEFAULTS[memo]
    key = _key(base, m, n, k, device)
    with _LOCK:
        _load_file()
        hit = _CHOICES.get(key)
    if hit:
        got = _SETTLED[memo] = (KernelSpec(**hit[0]), hit[1])
        return got
    cands = candidates(base, m, n, k, device)
    if not tune:
        got = _DEFAULTS[memo] = cands[0]  # not settled: a later call that may tune does so
        return got
    best, best_t = time_candidates(cands, run, _timer(device))
    if best_t == float("inf"):  # nothing could be timed: keep the heuristic default, unsettled (no cache entry)
        import warnings

        warnings.warn(f"qcomp.tune: no candidate of {base.name()} could be timed for M={m}, {n}x{k}; using the "
                      "untuned default (QCOMP_TUNE_VERBOSE=1 prints why)", RuntimeWarning, stacklevel=2)
        got = _DEFAULTS[memo] = cands[0]
        return got
    with _LOCK:
        _CHOICES[key] = (best[0].to_dict(), best[1])
        try:
            _save_file()
        except OSError:
            pass
    _SETTLED[memo] = best
    return best
