"""The short table at the end of benchmarks/gpu_check.sh: issue 5 and 7 targets against what OUT_DIR holds.

    python3 benchmarks/gpu_check_summary.py OUT_DIR

Reads OUT_DIR/kernels/bench_kernels.tsv, OUT_DIR/decode/decode.json and OUT_DIR/marlin/bench_kernels.tsv (each
optional: a missing one prints "not run"). Only measured rows count; nothing is filled in.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

SHAPE = "28672x8192"
COPY_TARGET, FP16_TARGET_W4, HAD_TARGET, DECODE_TARGET = 0.80, 3.3, 0.10, 2.5


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return [r for r in csv.DictReader(f, delimiter="\t") if r.get("us")]


def _us(rows, contestant, bits, m, shape=SHAPE):
    for r in rows:
        if r["contestant"] == contestant and int(r["b"]) == bits and int(r["M"]) == m and r["NxK"] == shape:
            return float(r["us"]), r
    return None, None


def kernel_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["kernels: not run"]
    out = [f"kernels {SHAPE}, M=1   us   x_copy (>= {COPY_TARGET})   x_fp16   had128 overhead (<= {HAD_TARGET:.0%})"]
    for b in (2, 3, 4, 8):
        us, r = _us(rows, "qcomp-uniform", b, 1)
        if us is None:
            out.append(f"  w{b}: not run")
            continue
        had, _ = _us(rows, "qcomp-uniform-had128", b, 1)
        x_copy, x_fp16 = float(r["x_copy"]), float(r["x_fp16"])
        goal = f" (w4 target {FP16_TARGET_W4})" if b == 4 else ""
        over = f"{had / us - 1:+.0%} {'ok' if had / us - 1 <= HAD_TARGET else 'MISSED'}" if had else "not run"
        out.append(f"  w{b}: {us:7.1f}   {x_copy:.2f} {'ok' if x_copy >= COPY_TARGET else 'MISSED'}   "
                   f"{x_fp16:.2f}{goal}   {over}")
    return out


def peer_lines(rows: list[dict], peer: str, ms) -> list[str]:
    out = []
    for m in ms:
        them, _ = _us(rows, peer, 4, m)
        us, _ = _us(rows, "qcomp-uniform", 4, m)
        if them is None or us is None:
            out.append(f"  {peer} M={m}: not run")
        else:
            out.append(f"  {peer} M={m}: {them:.1f} us, qcomp w4 {us:.1f} us: "
                       f"{'ok' if us <= them else 'MISSED'} ({them / us:.2f}x)")
    return out


def decode_lines(path: Path) -> list[str]:
    if not path.exists():
        return ["decode: not run"]
    rows = json.loads(path.read_text())
    base = next((r for r in rows if r["config"].startswith("bf16 (eager")), None)
    out = []
    for r in rows:
        if r["config"].startswith("qcomp") and base:
            x = base["ms_per_step"] / r["ms_per_step"]
            out.append(f"decode {r['config']}, batch {r['batch']}: {r['ms_per_step']:.3f} ms/step, {x:.2f}x bf16 "
                       f"eager+graph ({base['ms_per_step']:.3f} ms) {'ok' if x >= DECODE_TARGET else 'MISSED'} "
                       f"(target {DECODE_TARGET}x)")
    return out or ["decode: no qcomp row"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: gpu_check_summary.py OUT_DIR (the folder gpu_check.sh wrote)")
    out = Path(argv[0])
    kernels = _rows(out / "kernels" / "bench_kernels.tsv")
    lines = kernel_lines(kernels) + peer_lines(kernels, "tinygemm-w4g128", (1,))
    lines += peer_lines(_rows(out / "marlin" / "bench_kernels.tsv"), "marlin-quanto-w4g128", (1, 16))
    lines += decode_lines(out / "decode" / "decode.json")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
