"""Benchmark qcomp's generated qlinear kernels on one GPU against cuBLAS fp16 and peers; one command.

    python benchmarks/bench_kernels.py [--quick] [--out DIR] [--no-peers]

Per shape (N x K) and batch M: cuBLAS fp16 (F.linear), qcomp for b in {2,3,4,5,6,8} x {uniform, lut}
x {no rotation, fused Hadamard 128}, group 128, and peers that import (tinygemm int4, bitsandbytes NF4,
gemlite W4, Marlin through optimum-quanto: --peers picks them; --shapes/--bits/--budget bound the run).
Timing: CUDA-graph replay of R calls over R weight copies (R * bytes > 150 MB, past the 50 MB L2), median
over replays, divided by R. Effective TB/s = (packed weight + scale bytes) / time; x_copy = that over the
D2D copy bandwidth measured in the same run; x_fp16 = fp16 time / time; relerr = ||y - ref|| / ||ref||
with ref = rot(x) @ W_hat^T in float32 from the unpacked weight. Kernels are compiled first by a process
pool (Triton's disk cache), then autotuned and timed in this process. Writes DIR/bench_kernels.tsv and
DIR/bench_kernels.log; prints the batch-1 / summary table last.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

from qcomp.codegen.tune import graph_time_us as _graph_time_us


def _graph_calls_setting() -> int:
    raw = os.environ.get("QCOMP_BENCH_GRAPH_CALLS", "32").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"QCOMP_BENCH_GRAPH_CALLS={raw!r}: give the least number of calls per timed CUDA graph (>= 1; "
                         f"1 times one call per weight copy, as before session 37)")
    return int(raw)


# Calls per timed CUDA graph, at least (the weight copies cycled): until session 36 a graph held one call per copy,
# 2-3 for the big shapes, and each call carried a third to a half of the replay's launch cost (session 37 measured
# both ways in one run: RESULTS_kernels.md). --graph-calls or QCOMP_BENCH_GRAPH_CALLS set it; 1 is the old way.
GRAPH_CALLS = _graph_calls_setting()


def graph_time_us(fns, replays: int = 15) -> float:
    """Median µs per call (codegen.tune.graph_time_us) with at least GRAPH_CALLS calls per graph; also imported from
    here by the sweep, A/B and time_specs scripts."""
    return _graph_time_us(fns, replays, min_calls=GRAPH_CALLS)

SHAPES = [(28672, 8192), (8192, 28672), (4096, 4096), (14336, 4096), (4096, 14336)]  # target shapes first
MS = [1, 16, 64, 256]
BITS = [2, 3, 4, 5, 6, 8]
GRIDS = ["uniform", "lut"]
HADS = [0, 128]
GROUP = 128
L2_BYTES = 150e6


def log(*a):
    print(*a, flush=True)


def copy_bandwidth() -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    ts = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    del a, b
    return 2 * (1 << 30) / statistics.median(ts) / 1e12


def copies_for(nbytes: int) -> int:
    return int(min(64, max(2, math.ceil(L2_BYTES / max(nbytes, 1)))))


def relerr(y, ref) -> float:
    y, ref = y.float(), ref.float()
    if not torch.isfinite(y).all():
        return float("nan")
    return float((y - ref).norm() / ref.norm())


# -- qcomp weights --------------------------------------------------------------------------------
def make_qweight(n, k, bits, grid, gen):
    from qcomp.codegen.packing import pack_codes

    codes = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8, generator=gen)
    packed = pack_codes(codes, bits).cuda()
    scales = ((torch.rand(n, k // GROUP, generator=gen) + 0.5) * 0.02).half().cuda()
    lut = torch.sort(torch.randn(2**bits, generator=gen))[0].reshape(-1, 1).cuda()
    return packed, scales, lut


def precompile(configs, workers):
    """All tuning candidates of the (n, k, m, bits, grid, had) configs, compiled by a process pool first."""
    from qcomp.codegen.ops import FUSED_HADAMARD_MAX_M, base_spec
    from qcomp.codegen.precompile import KernelCall
    from qcomp.codegen.precompile import precompile as compile_all

    calls = [KernelCall(base_spec(torch.float16, bits, 1, GROUP, grid, had if m <= FUSED_HADAMARD_MAX_M else 0),
                        m, n, k, "float16", "float16", False, None) for n, k, m, bits, grid, had in configs]
    r = compile_all(calls, "cuda", workers)
    log(f"precompiled {r['compiled']}/{r['jobs']} kernels with {r['workers']} processes in {r['seconds']:.0f} s")


# -- peers ----------------------------------------------------------------------------------------
def asym_int4(w16):
    """Min-max 4-bit codes per GROUP along K: (q uint8 [n, k], scale and lo float32 [n, k/GROUP, 1])."""
    n, k = w16.shape
    wf = w16.float().reshape(n, k // GROUP, GROUP)
    lo, hi = wf.amin(-1, keepdim=True), wf.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp_min(1e-6)
    q = torch.round((wf - lo) / scale).clamp(0, 15).to(torch.uint8).reshape(n, k)
    return q, scale, lo


def peer_tinygemm(w16, x, copies):
    n, k = w16.shape
    g = GROUP
    q, scale, lo = asym_int4(w16)
    q = q.to(torch.int32)
    zero = lo + 8 * scale  # tinygemm: w = (q - 8) * scale + zero
    sz = torch.stack([scale.reshape(n, -1), zero.reshape(n, -1)], -1).transpose(0, 1).contiguous().bfloat16()
    qu8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
    packed = torch.ops.aten._convert_weight_to_int4pack(qu8, 8)
    xb = x.bfloat16()
    ws = [packed.clone() for _ in range(copies)]
    fns = [lambda w=w: torch.ops.aten._weight_int4pack_mm(xb, w, g, sz) for w in ws]
    ref = xb.float() @ ((q.float().reshape(n, k // g, g) - 8) * scale + zero).reshape(n, k).t()
    return fns, relerr(fns[0](), ref), packed.numel() * packed.element_size() + sz.numel() * 2


def peer_bnb(w16, x, copies):
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    qw, st = bf.quantize_4bit(w16, quant_type="nf4", blocksize=64)
    wd = bf.dequantize_4bit(qw, st).float()
    ws = [qw.clone() for _ in range(copies)]
    fns = [lambda w=w: bnb.matmul_4bit(x, w.t(), quant_state=st) for w in ws]
    nbytes = qw.numel() * qw.element_size() + st.absmax.numel() * st.absmax.element_size()
    return fns, relerr(fns[0](), x.float() @ wd.t()), nbytes


def peer_gemlite(w16, x, copies):
    from gemlite.helper import A16Wn

    n, k = w16.shape
    g = GROUP
    q, scale, lo = asym_int4(w16)
    zero = -lo / scale  # gemlite: w = (q - zero) * scale
    mods = [A16Wn(device="cuda:0", dtype=torch.float16).from_weights(q.clone(), scale.reshape(n, -1).half(),
                                                                     zero.reshape(n, -1).half(), 4, g)
            for _ in range(copies)]
    fns = [lambda mod=mod: mod(x) for mod in mods]
    wd = ((q.float().reshape(n, k // g, g) - zero.half().float()) * scale.half().float()).reshape(n, k)
    return fns, relerr(fns[0](), x.float() @ wd.t()), n * k // 2 + 2 * 2 * n * (k // g)


def _to_marlin(wq):
    """quanto 0.2.7 picks its AWQ kernel for fp16 qint4 group 128 (which faults on the H200 at 28672x8192);
    re-wrap the same codes, scales and shifts as its Marlin tensor."""
    from optimum.quanto.tensor.weights.marlin.int4.qbits import MarlinInt4WeightQBitsTensor

    base = wq.weight_qbits_tensor() if hasattr(wq, "weight_qbits_tensor") else wq
    return MarlinInt4WeightQBitsTensor(base._qtype, base._axis, base._group_size, base.size(), base.stride(),
                                       base._data.unpack(), base._scale, base._shift)


def peer_marlin(w16, x, copies):
    """optimum-quanto qint4 group 128 (Marlin kernel on sm80+ fp16; the weight class is reported)."""
    from optimum.quanto import freeze, qint4, quantize

    n, k = w16.shape
    mods = []
    for _ in range(copies):
        holder = torch.nn.Sequential(torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.float16))
        holder[0].weight.data.copy_(w16)
        quantize(holder, weights=qint4)  # quanto swaps the children of a module, never the module passed in
        freeze(holder)
        holder[0].weight = torch.nn.Parameter(_to_marlin(holder[0].weight), requires_grad=False)
        mods.append(holder[0])
    log(f"quanto weight class: {type(mods[0].weight).__name__}")
    fns = [lambda mod=mod: mod(x) for mod in mods]
    wd = mods[0].weight.dequantize().float()
    return fns, relerr(fns[0](), x.float() @ wd.t()), n * k // 2 + 2 * 2 * n * (k // 128)


PEERS = {"tinygemm-w4g128": (4, peer_tinygemm), "bnb-nf4-b64": (4, peer_bnb), "gemlite-w4g128": (4, peer_gemlite),
         "marlin-quanto-w4g128": (4, peer_marlin)}


# -- main -----------------------------------------------------------------------------------------
def _shape(text: str) -> tuple[int, int]:
    try:
        n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shape takes N x K as two integers joined by 'x' (e.g. 6144x4096), got {text!r}")
    if n <= 0 or k <= 0 or k % 128:
        raise SystemExit(f"--shape {text}: N and K must be positive and K a multiple of 128 (the pack tile)")
    return n, k


def main():
    global GRAPH_CALLS
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one shape, M in {1, 16, 256}, b in {2, 4}")
    ap.add_argument("--budget", type=float, default=420, help="seconds; later configs are skipped past it")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated peer names")
    ap.add_argument("--shapes", type=int, default=len(SHAPES), help="the first N shapes of SHAPES")
    ap.add_argument("--shape", action="append", default=None, metavar="NxK",
                    help="an N x K weight shape to run instead of SHAPES (repeatable), e.g. 6144x4096")
    ap.add_argument("--bits", default=",".join(map(str, BITS)), help="comma-separated bit widths")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--ms", default=",".join(map(str, MS)), help="comma-separated batch sizes M")
    ap.add_argument("--grids", default=",".join(GRIDS), help="comma-separated grids (uniform, lut)")
    ap.add_argument("--hads", default=",".join(map(str, HADS)), help="comma-separated Hadamard blocks (0: none)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--graph-calls", type=int, default=GRAPH_CALLS,
                    help="least calls per timed CUDA graph, the weight copies cycled (default: QCOMP_BENCH_GRAPH_CALLS "
                         "or 32; 1: one call per copy, as before session 37)")
    args = ap.parse_args()
    if args.graph_calls < 1:
        ap.error(f"--graph-calls must be >= 1, got {args.graph_calls}")
    GRAPH_CALLS = args.graph_calls
    unknown = [p for p in args.peers.split(",") if p and p not in PEERS]
    if unknown and not args.no_peers:
        ap.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    os.makedirs(args.out, exist_ok=True)
    from qcomp.codegen.hadamard_util import rotate_blocks
    from qcomp.codegen.ops import qlinear

    shapes = [_shape(s) for s in args.shape] if args.shape else SHAPES[: args.shapes]
    ms, bits_list = [int(v) for v in args.ms.split(",")], [int(b) for b in args.bits.split(",")]
    GRIDS[:] = args.grids.split(",")
    HADS[:] = [int(v) for v in args.hads.split(",")]
    t_start = time.time()
    if args.quick:
        shapes, ms, bits_list = [(28672, 8192)], [1, 16, 256], [2, 4]
    t_start = time.time()
    name = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    log(f"GPU {name} | torch {torch.__version__} | copy 1 GiB D2D (read+write): {bw:.2f} TB/s | timed CUDA graphs "
        f"of >= {GRAPH_CALLS} calls")
    configs = [(n, k, m, b, g, h) for n, k in shapes for m in ms for b in bits_list for g in GRIDS for h in HADS]
    precompile(configs, args.workers)

    tsv = open(os.path.join(args.out, "bench_kernels.tsv"), "w")
    cols = ["contestant", "b", "grid", "had", "NxK", "M", "us", "TBs", "x_copy", "x_fp16", "relerr", "kernel", "status"]
    tsv.write("\t".join(cols) + "\n")
    rows = []

    def emit(**r):
        if "status" in r:  # one TSV row per result: an exception's message may hold newlines or tabs
            r["status"] = " ".join(str(r["status"]).split())
        rows.append(r)
        tsv.write("\t".join(str(r.get(c, "")) for c in cols) + "\n")
        tsv.flush()
        us = r.get("us")
        log(f"{r['contestant']:<22}{r['b']:>3} {r['NxK']:>11} {r['M']:>4} "
            + (f"{us:9.2f} {r['TBs']:6.2f} {r['x_copy']:5.2f} {r['x_fp16']:6.2f} {r['relerr']:.1e} {r.get('kernel', '')}"
               if us is not None else f"        - {r['status']}"))

    gen = torch.Generator().manual_seed(0)
    for n, k in shapes:
        w16 = (torch.randn(n, k, generator=gen) * 0.02).half().cuda()
        xs = {m: torch.randn(m, k, generator=gen).half().cuda() for m in ms}
        fp16_us = {}
        wc = [w16] + [w16.clone() for _ in range(copies_for(w16.numel() * 2) - 1)]
        for m in ms:
            x = xs[m]
            us = graph_time_us([lambda w=w: F.linear(x, w) for w in wc])
            fp16_us[m] = us
            by = w16.numel() * 2
            emit(contestant="fp16-cublas", b=16, grid="-", had=0, NxK=f"{n}x{k}", M=m, us=us, TBs=by / us / 1e6,
                 x_copy=by / us / 1e6 / bw, x_fp16=1.0, relerr=relerr(F.linear(x, w16), x.float() @ w16.float().t()),
                 status="ok")
        del wc
        for bits in bits_list:
            for grid in GRIDS:
                packed, scales, lut = make_qweight(n, k, bits, grid, gen)
                from qcomp.codegen.ops import reference_weight
                what = reference_weight(packed, scales, lut, None, bits, 1, GROUP, grid, n, k)
                nbytes = packed.numel() * 4 + scales.numel() * 2
                pcs = [packed] + [packed.clone() for _ in range(copies_for(nbytes) - 1)]
                for had in HADS:
                    signs = (torch.randint(0, 2, (had,), generator=gen) * 2 - 1).float().cuda() if had else None
                    for m in ms:
                        x = xs[m]
                        kw = dict(bits=bits, p=1, group_size=GROUP, grid=grid, n=n, k=k, had_block=had,
                                  had_signs=signs)
                        tag = f"qcomp-{grid}{'-had' + str(had) if had else ''}"
                        if time.time() - t_start > args.budget:
                            emit(contestant=tag, b=bits, grid=grid, had=had, NxK=f"{n}x{k}", M=m, status="SKIP budget")
                            continue
                        try:
                            y = qlinear(x, packed, scales, lut, None, None, **kw)  # autotunes, then checks
                            xr = rotate_blocks(x.float(), signs, had) if had else x.float()
                            err = relerr(y, xr @ what.t())
                            us = graph_time_us([lambda p_=p_: qlinear(x, p_, scales, lut, None, None, **kw)
                                                for p_ in pcs])
                            from qcomp.codegen import tune
                            from qcomp.codegen.ops import base_spec
                            from qcomp.codegen.ops import FUSED_HADAMARD_MAX_M
                            fused = had if m <= FUSED_HADAMARD_MAX_M else 0  # larger M: x rotated apart
                            spec, split = tune.choose(base_spec(x.dtype, bits, 1, GROUP, grid, fused), m, n, k,
                                                      x.device, None)
                            emit(contestant=tag, b=bits, grid=grid, had=had, NxK=f"{n}x{k}", M=m, us=us,
                                 TBs=nbytes / us / 1e6, x_copy=nbytes / us / 1e6 / bw, x_fp16=fp16_us[m] / us,
                                 relerr=err, kernel=f"{spec.variant}:n{spec.block_n}k{spec.block_k}m{spec.block_m}"
                                 f"w{spec.num_warps}s{spec.num_stages}x{split}{'ra' if spec.a_regs else ''}"
                                 f"{'s' if spec.a_scales else ''}{'rw' if spec.rolling_wait else ''}"
                                 f"{'hx' if spec.had_scratch else ''}{'ho' if spec.had_once else ''}"
                                 f"{'xo' if spec.x_once else ''}{'cpa' if spec.cp_async else ''}",
                                 status="ok" if err < 1e-2 else "BAD")
                        except Exception as e:
                            traceback.print_exc()
                            emit(contestant=tag, b=bits, grid=grid, had=had, NxK=f"{n}x{k}", M=m,
                                 status=f"ERR {type(e).__name__}: {str(e)[:80]}")
                del pcs, what
        if not args.no_peers:
            for pname, (pb, fn) in PEERS.items():
                if pname not in args.peers.split(","):
                    continue
                for m in ms:
                    if time.time() - t_start > args.budget + 60 or (pname.startswith("marlin") and (n, k) != shapes[0]):
                        emit(contestant=pname, b=pb, grid="-", had=0, NxK=f"{n}x{k}", M=m, status="SKIP budget")
                        continue
                    try:
                        fns, err, nbytes = fn(w16, xs[m], copies_for(w16.numel() // 4))
                        us = graph_time_us(fns)
                        emit(contestant=pname, b=pb, grid="-", had=0, NxK=f"{n}x{k}", M=m, us=us,
                             TBs=nbytes / us / 1e6, x_copy=nbytes / us / 1e6 / bw, x_fp16=fp16_us[m] / us,
                             relerr=err, status="ok")
                    except Exception as e:
                        emit(contestant=pname, b=pb, grid="-", had=0, NxK=f"{n}x{k}", M=m,
                             status=f"ERR {type(e).__name__}: {str(e)[:80]}")
        del w16, xs
        torch.cuda.empty_cache()
    tsv.close()
    summary(rows, name, bw)


def summary(rows, name, bw):
    """Short table: per shape and M, fp16 and each qcomp bits' best (uniform, no rotation) + had overhead."""
    log("")
    log(f"== summary | {name} | copy {bw:.2f} TB/s | us (x_copy, x_fp16); had = fused-Hadamard-128 overhead ==")
    key = {(r["contestant"], r["b"], r["NxK"], r["M"]): r for r in rows if r.get("us") is not None}
    shapes = sorted({r["NxK"] for r in rows}, key=lambda s: [int(v) for v in s.split("x")])
    ms = sorted({r["M"] for r in rows})
    bits = sorted({r["b"] for r in rows if r["contestant"].startswith("qcomp")})
    for grid in GRIDS:
        log(f"-- grid {grid}")
        log(f"{'NxK':>11} {'M':>4} {'fp16':>7} " + " ".join(f"{'w' + str(b):>18}" for b in bits) + "  had%(w4)")
        for s in shapes:
            for m in ms:
                f = key.get(("fp16-cublas", 16, s, m))
                cells = []
                for b in bits:
                    r = key.get((f"qcomp-{grid}", b, s, m))
                    cells.append(f"{r['us']:7.1f}({r['x_copy']:.2f},{r['x_fp16']:.1f}x)" if r else f"{'-':>18}")
                r0, r1 = key.get((f"qcomp-{grid}", 4, s, m)), key.get((f"qcomp-{grid}-had128", 4, s, m))
                had = f"{100 * (r1['us'] / r0['us'] - 1):+.0f}%" if r0 and r1 else "-"
                log(f"{s:>11} {m:>4} {f['us'] if f else float('nan'):7.1f} " + " ".join(f"{c:>18}" for c in cells)
                    + f"  {had}")
    peers = [p for p in PEERS if any(r["contestant"] == p for r in rows)]
    log("-- batch-M view at 4 bits (us): fp16, qcomp uniform / +had128 / lut, peers")
    log(f"{'NxK':>11} {'M':>4} {'fp16':>7} {'w4':>7} {'w4had':>7} {'w4lut':>7} " + " ".join(f"{p[:14]:>14}" for p in peers))
    for s in shapes:
        for m in ms:
            def us(c, b=4):
                r = key.get((c, b, s, m))
                return f"{r['us']:7.1f}" if r else f"{'-':>7}"
            log(f"{s:>11} {m:>4} {us('fp16-cublas', 16)} {us('qcomp-uniform')} {us('qcomp-uniform-had128')} "
                f"{us('qcomp-lut')} " + " ".join(f"{us(p):>14}" for p in peers))
    bad = [r for r in rows if r.get("status") not in ("ok",)]
    log(f"rows {len(rows)}, not ok {len(bad)}; max relerr qcomp "
        f"{max((r['relerr'] for r in rows if r['contestant'].startswith('qcomp') and r.get('us')), default=float('nan')):.1e}")


if __name__ == "__main__":
    sys.exit(main())
