"""Lookup tables of up to 16 entries held in registers and read by PRMT byte selects (text for render.py): in the
packed-half2 GEMV (all codes of a word per PRMT chain) and in the plain tensor-core tile (two codes per chain).

Why: the plain lookup-table GEMV loads every weight from the table (`tl.load(lut_ptr + code)`, one global load per
weight, L1-resident): on the H100 it ran 4x slower than the uniform grid at M=1 (w4 28672x8192: 213 vs 51 us,
benchmarks/RESULTS_kernels.md, v15). A table of up to 16 fp16 entries fits in 8 registers as byte planes: TL_k holds
the low bytes of entries 4k..4k+3, TH_k their high bytes. PRMT picks 4 bytes out of 8 by 3-bit selectors, so a
code's low 3 bits select its byte inside a half table and its bit 3 picks the half (a third PRMT); two more PRMT
stages interleave low and high bytes into the fp16 pairs the half2 path multiplies with x pairs (half2_pairs: slots
jj and jj + S/2, the two 16-bit halves of one word).

Scope (eligible): gemv, grid "lut" with p = 1, 2- or 4-bit codes (one plane), scales per row or per K step, fp16 or
bf16 activations (the half2 path computes in fp16, x scaled by a power of two). Table values are rounded to fp16
(the reference uses them in float32: relative error ~2^-12 per weight) and must be finite in fp16 (|v| < 65504);
the x scale leaves room for the table's largest |v| (read at run time: table_setup's `ev`).

The plain tensor-core tile (render._gemm_body, M > 16 and the 16-row tiles) builds a [BLOCK_N, T, S, W0] tensor of
codes for any layout (the 3-bit trio too); tile_eligible tables (p = 1, codes of <= 4 bits) replace its table load
per weight by _lut_one: two codes per PTX block, the table's byte planes in the activation dtype.

The CPU interpreter cannot run inline asm: there each pair is two table loads (the plain-Triton twin), same values.
"""
from __future__ import annotations


def eligible(s) -> bool:
    return s.variant == "gemv" and s.grid == "lut" and s.p == 1 and s.bits in (2, 4)


def n_tables(s) -> int:
    """Byte-plane registers per plane (low bytes, high bytes): one per 4 entries."""
    return max(1, 2 ** s.bits // 4)


def _plane_names(count: int) -> str:
    """The byte-plane registers: low-byte planes tl0.., then high-byte planes th0.."""
    return ", ".join([f"tl{k}" for k in range(count)] + [f"th{k}" for k in range(count)])


def table_args(s) -> str:
    return _plane_names(n_tables(s))


def _byte_planes(n: int, count: int, dt: str) -> list[str]:
    """Lines that load the n table entries once (lv<i>, float32) and pack them, rounded to `dt`, into `count` low-
    and high-byte planes of 4 entries each (planes past the table: zero)."""
    L = [f"lv{i} = tl.load(lut_ptr + {i})" for i in range(n)]
    L += [f"lb{i} = lv{i}.to({dt}).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF" for i in range(n)]
    for k in range(count):
        idx = range(4 * k, min(n, 4 * k + 4))
        L.append(f"tl{k} = " + (" | ".join(f"((lb{i} & 0xFF) << {8 * (i - 4 * k)})" for i in idx) or "K * 0"))
        L.append(f"th{k} = " + (" | ".join(f"((lb{i} >> 8) << {8 * (i - 4 * k)})" for i in idx) or "K * 0"))
    return L


def _ptx_w4() -> str:
    """Outputs $0..$3: pairs (jj, jj + 4); inputs: $4 the word, $5..$8 TL0..3, $9..$12 TH0..3."""
    half = []
    for sel, tsel, lo, hi in (("s", "t", "la", "ha"), ("s2", "t2", "lb", "hb")):  # codes 0-3, then 4-7
        half += [f"prmt.b32 a, $5, $6, {sel}; prmt.b32 b, $7, $8, {sel}; prmt.b32 {lo}, a, b, {tsel};",
                 f"prmt.b32 a, $9, $10, {sel}; prmt.b32 b, $11, $12, {sel}; prmt.b32 {hi}, a, b, {tsel};"]
    return " ".join([
        "{ .reg .b32 s, t, s2, t2, a, b, la, ha, lb, hb, x1, y1, x2, y2;",
        "and.b32 s, $4, 0x77777777; shr.b32 t, $4, 1; lop3.b32 t, t, 0x44444444, 0x32103210, 0xEA;",
        "shr.b32 s2, s, 16; shr.b32 t2, t, 16;",
        *half,
        "prmt.b32 x1, la, lb, 0x5140; prmt.b32 y1, ha, hb, 0x5140; prmt.b32 x2, la, lb, 0x7362;",
        "prmt.b32 y2, ha, hb, 0x7362;",
        "prmt.b32 $0, x1, y1, 0x5140; prmt.b32 $1, x1, y1, 0x7362; prmt.b32 $2, x2, y2, 0x5140;",
        "prmt.b32 $3, x2, y2, 0x7362; }",
    ])


def _ptx_w2() -> str:
    """Outputs $0..$7: pairs (jj, jj + 8); inputs: $8 the word, $9 TL0, $10 TH0. Nibble i of sa holds code 2i, of sb
    code 2i + 1; sa >> 16 and sb >> 16 the codes 8 higher."""
    L = ["{ .reg .b32 sa, sb, sa2, sb2, l0, l1, h0, h1, x1, y1, x2, y2;",
         "and.b32 sa, $8, 0x33333333; shr.b32 sb, $8, 2; and.b32 sb, sb, 0x33333333; shr.b32 sa2, sa, 16;",
         "shr.b32 sb2, sb, 16;"]
    for lo_sel, hi_sel, outs in (("sa", "sa2", (0, 2, 4, 6)), ("sb", "sb2", (1, 3, 5, 7))):
        L += [f"prmt.b32 l0, $9, $9, {lo_sel}; prmt.b32 l1, $9, $9, {hi_sel};",
              f"prmt.b32 h0, $10, $10, {lo_sel}; prmt.b32 h1, $10, $10, {hi_sel};",
              "prmt.b32 x1, l0, l1, 0x5140; prmt.b32 y1, h0, h1, 0x5140;",
              "prmt.b32 x2, l0, l1, 0x7362; prmt.b32 y2, h0, h1, 0x7362;",
              f"prmt.b32 ${outs[0]}, x1, y1, 0x5140; prmt.b32 ${outs[1]}, x1, y1, 0x7362;",
              f"prmt.b32 ${outs[2]}, x2, y2, 0x5140; prmt.b32 ${outs[3]}, x2, y2, 0x7362;"]
    return " ".join(L + ["}"])


def helpers(s) -> list[str]:
    """_lut_pairs(word, lut_ptr, tables...) -> the S/2 fp16 pairs of one word's codes, looked up."""
    H = 16 // s.bits
    w, mask = s.bits, 2 ** s.bits - 1
    ptx = _ptx_w4() if s.bits == 4 else _ptx_w2()
    outs = ", ".join(f"p{i}" for i in range(H))
    twin = [f"        p{i} = _pack(tl.load(lut_ptr + ((word >> {i * w}) & {mask})).to(tl.float16), "
            f"tl.load(lut_ptr + ((word >> {i * w + 16}) & {mask})).to(tl.float16))" for i in range(H)]
    return [
        "@triton.jit",
        f"def _lut_pairs(word, lut_ptr, {table_args(s)}):",
        f"    # the {H} pairs (slot jj, slot jj + {H}) of each word as fp16 table values: the table's byte planes in",
        "    # registers, PRMT selects (lut_regs.py); under the interpreter two table loads per pair",
        "    if USE_PTX:",
        "        return tl.inline_asm_elementwise(",
        f"            {ptx!r},",
        f"            \"{','.join(['=r'] * H + ['r'] * (1 + 2 * n_tables(s)))}\",",
        f"            [word, {table_args(s)}], dtype=({', '.join(['tl.int32'] * H)}), is_pure=True, pack=1)",
        "    else:",
        *twin,
        f"        return {outs}",
        "",
        "",
    ]


def table_setup(s) -> list[str]:
    """Before the K loop: the table's fp16 byte planes (tl<k>, th<k>) and ev with max |table| < 2^ev."""
    n = 2 ** s.bits
    L = [f"# the {n}-entry table as fp16 byte planes in registers (lut_regs.py), and its largest |value|"]
    L += _byte_planes(n, n_tables(s), "tl.float16")
    L.append("vmax = " + max_tree([f"tl.abs(lv{i})" for i in range(n)]))
    L.append("ev = ((vmax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 126  # max |table| < 2^ev")
    return L


def max_tree(xs: list[str]) -> str:
    """tl.maximum over the expressions, as a balanced tree."""
    while len(xs) > 1:
        xs = [f"tl.maximum({a}, {b})" for a, b in zip(xs[::2], xs[1::2])] + (xs[-1:] if len(xs) % 2 else [])
    return xs[0]


def pair_lines(s, word: str) -> tuple[list[str], list[str]]:
    """(lines, names): one _lut_pairs call per word; names[i] is pair i (half2_pairs order)."""
    H = 16 // s.bits
    names = [f"lp{i}" for i in range(H)]
    return [f"{', '.join(names)} = _lut_pairs({word}, lut_ptr, {table_args(s)})"], names


def tile_eligible(s) -> bool:
    return s.variant == "gemm" and s.grid == "lut" and s.p == 1 and s.code_bits <= 4


def _ptx_one() -> str:
    """Output $0: the fp16/bf16 pair (lookup of code $1, lookup of code $2); pack 2, so each argument comes twice:
    $3, $5, $7, $9 are TL0..3 and $11, $13, $15, $17 TH0..3 (their second copies unused)."""
    return " ".join([
        "{ .reg .b32 c, s, t, a, b, lo, hi;",
        "shl.b32 c, $2, 4; or.b32 c, c, $1; and.b32 s, c, 0x77; shr.b32 t, c, 1; lop3.b32 t, t, 0x44, 0x10, 0xEA;",
        "prmt.b32 a, $3, $5, s; prmt.b32 b, $7, $9, s; prmt.b32 lo, a, b, t;",
        "prmt.b32 a, $11, $13, s; prmt.b32 b, $15, $17, s; prmt.b32 hi, a, b, t;",
        "prmt.b32 $0, lo, hi, 0x5140; }",
    ])


def tile_helpers(dt: str) -> list[str]:
    """_lut_one(code, lut_ptr, tables...) -> the table value of each code (codes 0..15), in `dt`."""
    args = _plane_names(4)
    return [
        'USE_PTX = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")',
        "",
        "",
        "@triton.jit",
        f"def _lut_one(code, lut_ptr, {args}):",
        "    # each code's table value: the table's byte planes in registers, PRMT selects, two codes per block",
        "    # (lut_regs.py); under the interpreter a table load",
        "    if USE_PTX:",
        "        return tl.inline_asm_elementwise(",
        f"            {_ptx_one()!r},",
        f"            \"{','.join(['=r'] + ['r'] * 18)}\",",
        f"            [code, {args}], dtype={dt}, is_pure=True, pack=2)",
        "    else:",
        f"        return tl.load(lut_ptr + code).to({dt})",
        "",
        "",
    ]


def tile_table_setup(s, dt: str) -> list[str]:
    """Before the K loop: the table's byte planes tl0..3, th0..3 in `dt` (entries past the table: zero)."""
    n = 2 ** s.code_bits
    return [f"# the {n}-entry table as byte planes in registers (lut_regs.py)"] + _byte_planes(n, 4, dt)


def tile_lookup() -> str:
    return f"val = _lut_one(code, lut_ptr, {_plane_names(4)})  # table values, PRMT lookups in registers (lut_regs.py)"
