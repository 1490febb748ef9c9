"""Compile one generated qlinear kernel for an NVIDIA GPU (default sm_90, the H100) on any machine, no GPU
needed, and print what its K loop executes: SASS instruction counts, global/shared memory traffic, barriers.

    python benchmarks/kernel_sass.py '{"bits": 4, "variant": "gemv", "block_m": 1, "block_n": 64, "block_k": 128, "num_warps": 2}'
    python benchmarks/kernel_sass.py SPEC_JSON --arch 90 --out DIR   # also writes DIR/<name>.{ptx,sass}
    python benchmarks/kernel_sass.py SPEC_JSON --waits   # also the K loop's loads and who waits for them

SPEC_JSON holds KernelSpec fields (codegen/kernel_spec.py); missing ones take their defaults. The loop is the
longest backward branch in the SASS (the K-step loop of both variants). Per K step a gemv thread handles
block_n * cols_per_step / (32 * num_warps) kernel columns; the report divides the loop's instructions by the
codes a thread handles per step. A shared-memory store or a barrier inside the loop means Triton moved a
tensor between layouts there. Uses Triton's bundled ptxas and nvdisasm; the numbers are static counts, not
timings (benchmarks/bench_kernels.py measures those, on a GPU).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?);")
_BRA = re.compile(r"BRA\s+`?\(?(\.L_x_\d+)")


def compile_spec(spec, arch: int, even: bool = True, pdl: int | None = None, residual: bool = False, per_sm: int = 2,
                 split_k: int = 1):
    """triton.compile of the spec's kernel for sm_<arch>: its activation dtype, no bias; even: whole tiles (the
    unmasked loop of shapes that divide into the tiles, as the decode shapes do), else the masked one; pdl: the
    programmatic-dependent-launch level (ops.pdl_level; default: as the runtime launches without QCOMP_PDL, on
    sm_90 and later); per_sm: a stream_k wgmma launch's programs per SM; split_k > 1: a wgmma kernel as split-K
    launches run it (SPLIT_K not a constant: the partial sums' epilogue compiled in)."""
    from qcomp.codegen.ops import DEFAULT_PDL, PDL_LEVELS

    os.environ["TRITON_INTERPRET"] = "0"  # the interpreter would be used otherwise (set by the CPU tests)
    if spec.variant == "wgmma":
        return compile_wgmma(spec, arch, even, split_k=split_k, per_sm=per_sm)
    pdl = (PDL_LEVELS[DEFAULT_PDL] if arch >= 90 else 0) if pdl is None else pdl
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from qcomp.codegen.render import load_kernel

    act = "*fp16" if spec.act_dtype == "fp16" else "*bf16"
    sig = {"x_ptr": act, "w_ptr": "*i32", "s_ptr": act, "o_ptr": "*i32" if spec.a_scales else act, "lut_ptr": "*fp32",
           "sgn_ptr": "*fp32" if spec.had_block else act, "bias_ptr": act, "y_ptr": act,
           "ws_ptr": "*fp32", "cnt_ptr": "*i32", "nw_ptr": act, "res_ptr": act,
           "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_ym": "i32", "stride_w": "i32",
           "plane_words": "i32", "stride_s": "i32", "stride_rm": "i32", "norm_eps": "fp32", "SPLIT_K": "i32",
           "HAS_BIAS": "constexpr", "HAS_RES": "constexpr", "EVEN": "constexpr", "PDL": "constexpr"}
    aligned = [*range(12), 14, 15, 16, 17, 18, 19]  # pointers and the K-like sizes: multiples of 16
    if spec.tma_words:  # w_ptr is a TMA descriptor of [block_n / 16, 16, W] boxes (ops.tma_words_descriptor)
        from qcomp.codegen.packing import ROW_GROUP

        sig["w_ptr"] = f"tensordesc<i32[{spec.block_n // ROW_GROUP}, {ROW_GROUP}, {spec.tile_cols}]>"
        aligned.remove(1)
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = ASTSource(load_kernel(spec), sig, constexprs={"HAS_BIAS": False, "HAS_RES": residual, "EVEN": even, "PDL": pdl},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": spec.num_warps, "num_stages": spec.num_stages, "launch_pdl": bool(pdl)})


def compile_wgmma(spec, arch: int, even: bool = True, split_k: int = 1, per_sm: int = 2):
    """triton.compile of a Gluon wgmma kernel (gemm_wgmma.py) for sm_<arch> (90: wgmma exists only there), with x's
    TMA descriptor as the runtime builds it; split_k 1 is a constant, as Triton specializes an int argument of 1
    (stream_k: per_sm programs per SM, whose register cap launch compiles in; its SPLIT_K is always 1)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from qcomp.codegen.gemm_wgmma import compile_options, tma_words, w_descriptor, x_descriptor
    from qcomp.codegen.render import load_kernel

    desc = x_descriptor(torch.empty(spec.block_m, 128, dtype=torch.float16), spec.block_m)
    if tma_words(spec):
        wdesc = w_descriptor(torch.empty(spec.block_n, 4 * spec.bits, dtype=torch.int32), spec.bits, spec.block_n)
        w_arg, even_arg = {"w_desc": mangle_type(wdesc)}, {}
    else:
        w_arg, even_arg = {"w_ptr": "*i32"}, {"EVEN": "constexpr"}
    sig = {"x_desc": mangle_type(desc), **w_arg, "s_ptr": "*fp16", "bias_ptr": "*fp16", "y_ptr": "*fp16",
           "ws_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "stride_w": "i32",
           "stride_s": "i32", "stride_ym": "i32", "SPLIT_K": "constexpr" if split_k == 1 else "i32",
           "HAS_BIAS": "constexpr", **even_arg}
    consts = {"HAS_BIAS": False, **({"EVEN": even} if even_arg else {}), **({"SPLIT_K": 1} if split_k == 1 else {})}
    aligned = (1, 2, 3, 4, 5, 6, 9, 10, 11, 12)  # pointers and the K-like sizes: multiples of 16
    src = GluonASTSource(load_kernel(spec), sig, constexprs=consts,
                         attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    options = {"num_warps": spec.num_warps, **compile_options(spec, per_sm)}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def disassemble(cubin: bytes, hex_words: bool = False) -> str:
    """nvdisasm's SASS; hex_words: with each instruction's 128-bit encoding (its control bits: scoreboard_waits)."""
    import triton

    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    if not nvdisasm.exists():
        raise SystemExit(f"nvdisasm not found at {nvdisasm}: this Triton wheel does not bundle the CUDA binaries")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        cmd = [str(nvdisasm), "-c", *(["-hex"] if hex_words else []), f.name]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def registers(cubin: bytes) -> int | None:
    """Registers per thread (cuobjdump -res-usage; None where the wheel does not bundle cuobjdump): with the
    program's warps this sets how many programs an SM holds at once."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)", out)
    return int(m.group(1)) if m else None


def loop_span(lines: list[str], holding: str | None = None) -> tuple[int, int]:
    """Line indices (label, backward branch) of the longest loop; with `holding` (an opcode prefix), of the shortest
    loop that holds it instead (a wgmma kernel's mbarrier retry branch jumps back from the end of the code over
    everything, so the longest backward branch is not its K loop)."""
    labels = {ln.rstrip(":").strip(): i for i, ln in enumerate(lines) if re.match(r"^\.L_x_\d+:", ln.strip())}
    spans = [(labels[m.group(1)], i) for i, ln in enumerate(lines)
             if (m := _BRA.search(ln)) and m.group(1) in labels and labels[m.group(1)] < i]
    if holding:
        spans = [s for s in spans if any(holding in ln for ln in lines[s[0]: s[1] + 1])]
        return min(spans, key=lambda s: s[1] - s[0], default=(0, 0))
    return max(spans, key=lambda s: s[1] - s[0], default=(0, 0))


def loop_marker(spec) -> str | None:
    """The opcode that finds a kernel's K loop (loop_span's holding) where the longest backward branch is not it: a
    wgmma kernel's HGMMA, a tma_words GEMV's UTMALDG (both have an mbarrier retry branch from the end of the code)."""
    return "HGMMA" if spec.variant == "wgmma" else "UTMALDG" if spec.tma_words else None


def loop_body(sass: str, holding: str | None = None) -> list[str]:
    """Instructions (opcode + operands) of the K loop (loop_span)."""
    lines = sass.splitlines()
    first, last = loop_span(lines, holding)
    return [m.group(2) for ln in lines[first: last + 1] if (m := _LINE.match(ln))]


def scoreboard_waits(sass_hex: str, holding: str | None = None) -> list[tuple[int, str, int | None, list[int]]]:
    """The K loop's variable-latency instructions and their waiters, from the control bits of sm_90 SASS (nvdisasm
    -hex): (address, instruction, scoreboard it sets or None, scoreboards it waits for) for each global load, mbarrier
    wait and wgmma wait, and each instruction that waits for a scoreboard a load or an mbarrier wait sets. A
    scoreboard counts all its pending operations: an instruction that waits for an old load on the scoreboard of a
    newer one waits for both (how session 30 found the wgmma tile's K step waiting for its own prefetch). Control
    bits (high 64-bit word, bits 41..): write scoreboard bits 5-7 (7: none), wait mask bits 11-16."""
    lines = sass_hex.splitlines()
    first, last = loop_span(lines, holding)
    loop = []
    for i in range(first, min(last + 1, len(lines) - 1)):
        m = _LINE.match(lines[i])
        hi = re.search(r"/\* (0x[0-9a-f]{16}) \*/\s*$", lines[i + 1])
        if m and hi:
            ctrl = int(hi.group(1), 16) >> 41
            wb = (ctrl >> 5) & 7
            loop.append((int(m.group(1), 16), m.group(2).strip(), None if wb == 7 else wb,
                         [k for k in range(6) if ctrl >> (11 + k) & 1]))
    sources = {wb for _, ins, wb, _ in loop if wb is not None and re.search(r"\bLDG|TRYWAIT", ins)}
    return [d for d in loop if re.search(r"\bLDG|TRYWAIT|WARPGROUP.DEPBAR", d[1]) or set(d[3]) & sources]


_HGMMA_A = re.compile(r"HGMMA\.64x\d+x16\S*\s+R\d+,\s+R(\d+),")  # A from registers: 4 per thread (8 fp16)
_DEPBAR = re.compile(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s+(0x[0-9a-f]+|\d+)")
_DEST = re.compile(r"^(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)\s+(R\d+)")
_NO_DEST = ("ST", "RED", "ATOM", "BAR", "BRA", "SYNCS", "HGMMA", "WARPGROUP", "CCTL", "MEMBAR", "FENCE", "UTMA")


def _dest_regs(instr: str) -> set[int]:
    """Registers an instruction writes (its first operand; .64 / WIDE: two, .128: four); none for stores, branches,
    barriers and the wgmma itself (its accumulator is its own)."""
    m = _DEST.match(instr.strip())
    if not m or m.group(1).startswith(_NO_DEST):
        return set()
    r = int(m.group(2)[1:])
    n = 4 if ".128" in m.group(1) else 2 if (".64" in m.group(1) or ".WIDE" in m.group(1)) else 1
    return set(range(r, r + n))


def wgmma_a_hazards(body: list[str]) -> list[str]:
    """Writes to a register an in-flight wgmma still reads as its A operand, in two passes over the K loop's SASS
    (the second starts with what the first left in flight): each HGMMA puts its 4 A registers in flight, each
    WARPGROUP.DEPBAR.LE gsb0, N retires all but the N most recent. A wgmma reads A until it is retired, and nothing
    promises that ptxas's allocation respects that (NOTES_kernels.md, session 28: a wait one step late computed
    wrong results so), so a loop that keeps wgmmas in flight across K steps must come out of this empty. Branches
    inside the loop (the mbarrier retry) are read straight through."""
    flight: list[tuple[int, set[int]]] = []
    out = []
    for rnd in range(2):
        for i, ins in enumerate(body):
            if (m := _HGMMA_A.search(ins)):
                a = int(m.group(1))
                flight.append((i, set(range(a, a + 4))))
                continue
            if (m := _DEPBAR.search(ins)):
                keep = int(m.group(1), 0)
                flight = flight[len(flight) - keep:] if keep else []
                continue
            hit = _dest_regs(ins) & set().union(*(r for _, r in flight))
            if hit:
                who = [body[j] for j, r in flight if r & hit]
                out.append(f"pass {rnd + 1}: {ins.strip()} writes R{min(hit)} read by in-flight {who[0].strip()}")
    return out


def opcode(instr: str) -> str:
    op = instr.split()[0] if not instr.startswith("@") else instr.split()[1]
    return op


def report(spec, kernel, sass: str) -> dict:
    body = loop_body(sass, loop_marker(spec))
    ops = collections.Counter(opcode(i) for i in body)
    threads = 32 * spec.num_warps
    codes = spec.block_n * spec.block_k // spec.p / threads * spec.block_m if spec.variant == "gemv" else None
    md = kernel.metadata
    return {"kernel": spec.name(), "loop_instructions": len(body),
            "codes_per_thread_per_step": codes,
            "instructions_per_code": len(body) / codes if codes else None,
            "global_loads": sum(v for k, v in ops.items() if k.startswith("LDG")),
            "shared_stores": sum(v for k, v in ops.items() if k.startswith(("STS", "STSM"))),
            "shared_loads": sum(v for k, v in ops.items() if k.startswith(("LDS", "LDSM"))),
            "barriers": sum(v for k, v in ops.items() if k.startswith("BAR")),
            "local_memory": sum(v for k, v in ops.items() if k.startswith(("LDL", "STL"))),
            "wgmma_waits": [i for i in body if i.startswith("WARPGROUP.DEPBAR")],
            "wgmma_a_hazards": wgmma_a_hazards(body) if spec.variant == "wgmma" else [],
            "shared_bytes": getattr(md, "shared", None), "opcodes": dict(ops.most_common())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="KernelSpec fields as JSON")
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100), 80 (A100)")
    ap.add_argument("--out", type=Path, default=None, help="directory for the PTX and SASS")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--ragged", action="store_true", help="count the masked loop (shapes with partial tiles)")
    ap.add_argument("--residual", action="store_true", help="with the residual add in the epilogue (HAS_RES)")
    ap.add_argument("--waits", action="store_true",
                    help="also list the K loop's global loads, mbarrier waits and the instructions waiting for them "
                         "(scoreboards decoded from the SASS control bits)")
    ap.add_argument("--split-k", type=int, default=1, help="wgmma specs: compile as a split-K launch runs (> 1)")
    ap.add_argument("--per-sm", type=int, default=2, help="stream_k wgmma specs: programs per SM (the register cap)")
    ap.add_argument("--pdl", type=int, choices=(0, 1, 2), default=None,
                    help="programmatic dependent launch level (QCOMP_PDL; default: the runtime's default on sm_90+)")
    args = ap.parse_args(argv)
    from qcomp.codegen.kernel_spec import KernelSpec

    spec = KernelSpec(**json.loads(args.spec))
    kernel = compile_spec(spec, args.arch, even=not args.ragged, pdl=args.pdl, residual=args.residual,
                          per_sm=args.per_sm, split_k=args.split_k)
    sass = disassemble(kernel.asm["cubin"])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{spec.name()}.ptx").write_text(kernel.asm["ptx"])
        (args.out / f"{spec.name()}.sass").write_text(sass)
    r = report(spec, kernel, sass)
    r["registers"] = registers(kernel.asm["cubin"])
    r["pdl_wait"] = "griddepcontrol.wait" in kernel.asm["ptx"]
    r["pdl_trigger"] = "griddepcontrol.launch_dependents" in kernel.asm["ptx"]
    if args.waits:
        hexed = disassemble(kernel.asm["cubin"], hex_words=True)
        r["scoreboards"] = scoreboard_waits(hexed, loop_marker(spec))
        hg = [int(m.group(1), 16) for ln in hexed.splitlines() if (m := _LINE.match(ln)) and "HGMMA" in m.group(2)]
        r["first_hgmma"] = min(hg, default=None)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"{r['kernel']} (sm_{args.arch})")
    per = f", {r['instructions_per_code']:.2f} per code ({r['codes_per_thread_per_step']:g} codes per thread)" \
        if r["instructions_per_code"] else ""
    print(f"K loop: {r['loop_instructions']} instructions per step{per}; global loads {r['global_loads']}, "
          f"shared stores {r['shared_stores']} / loads {r['shared_loads']}, barriers {r['barriers']}; "
          f"{r['registers']} registers")
    print("  " + ", ".join(f"{k} {v}" for k, v in list(r["opcodes"].items())[:16]))
    if spec.variant == "wgmma":
        hz = r["wgmma_a_hazards"]
        print(f"wgmma A-register hazards: {len(hz)}" + "".join(f"\n  {h}" for h in hz[:8]))
    if args.waits:
        print("K loop scoreboards (address, sets, waits for, instruction):")
        for addr, ins, wb, waits in r["scoreboards"]:
            sets, waits_for = "-" if wb is None else f"sb{wb}", ",".join(f"sb{k}" for k in waits) or "-"
            print(f"  {addr:05x}  {sets:>4}  {waits_for:>9}  {ins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
