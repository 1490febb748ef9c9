"""The tensor-core tile with its dequantized weights in registers (KernelSpec.a_regs): text for render.py.

Why: the plain gemm tile (render._gemm_body) builds one [BLOCK_N, BLOCK_K] weight tile with a reshape and feeds it
to ONE tl.dot; Triton then stores the tile to shared memory and reads it back (STS + LDSM) before every wgmma.
Triton 3.6 keeps the wgmma's A operand in registers only when every op between the weights' load and the dot is
elementwise (arith, bitcast, pure unary inline asm) and every other input of that chain is a load or a constant
(OptimizeDotOperands' MMAV3HoistLayoutConversion): no reshape, no shift tensor built from tl.arange.

How: packing v5 (PACKING.md) already puts slot j of the W0 words of a tile on W0 consecutive codes
(t = j * W0 + i). So a K step loads the words as [BLOCK_N, T * W0] once and makes one tl.dot per slot j, each with
the [T * W0, BLOCK_M] activations at k = tile * 128 + j * W0 + i (runs of W0). The slot's codes come from the words
by one elementwise function with constants only: on CUDA one PTX block per pair of weights (a PRMT joins the
halves of two words that hold the slot, a shift and a LOP3 put 1024 + 2^a * code in each fp16 half, a sub.f16x2
or fma.f16x2 leaves 2 * code - (2^w - 1); the slots of a half share the PRMT and one of two shifts: slot_position);
under TRITON_INTERPRET=1 the same values in plain Triton. Scales multiply the
K step's partial sum, as in the plain tile; or, with a_scales, the slot's values (fp16, before the tl.dot), so that
the tl.dots of all K steps chain into one accumulator: the plain form waits for each step's products before it
scales them, which cost 14 % at M=64 and 30 % at M=256 on the H100 (session 23, against per-row scales).

Scope (KernelSpec.validate): uniform grid, one code plane of 1, 2, 4 or 8 bits, fp16 activations, one scale per
(row, K step) or per row, and T * W0 >= 16 (tl.dot's K).
"""
from __future__ import annotations

from .packing import ROW_GROUP, planes

FP16_MAGIC = 0x6400  # fp16 1024.0: its mantissa ulp is 1, so bits 0..9 OR-ed into it add exactly


def eligible(bits: int, grid: str, p: int, act_dtype: str, scale_per_tile: bool) -> str | None:
    """None if a spec with these fields may take a_regs, else why not (for KernelSpec.validate's message)."""
    if grid != "uniform" or p != 1:
        return "needs grid 'uniform' with p = 1"
    if len(planes(bits)) != 1 or bits == 3:
        return f"needs one code plane of 1, 2, 4 or 8 bits, got {bits}"
    if act_dtype != "fp16":
        return "needs fp16 activations"
    if not scale_per_tile:
        return "needs one scale per (row, K step): group_size -1 or a multiple of block_k"
    return None


def min_block_k(bits: int) -> int:
    """Smallest K step whose slot has >= 16 codes per row (tl.dot's K): T * 4 * bits >= 16."""
    return 128 * max(1, 4 // bits)


# the slots of a half share two shifted copies of its words (slot_position): static (triton 3.6, sm_90) 424 -> 394
# loop instructions per w4 K step of an m64 n128 a_scales tile, 384 -> 353 at m16. H100 A/B (session 27,
# benchmarks/cases/gemm_regs_shared_shifts.json, two rounds each): M=64 tiles 6-10 % faster (w4 m64 n128 4 warps
# 127.6 / 125.8 -> 118.1 / 115.3 us, m64 n256 8 warps 153.8 / 149.9 -> 138.1 / 138.4), M=256 tiles within 1 %, M=16
# m16 n128 within 2 % and m16 n256 3-5 % slower. "auto": shared where the tile has >= 64 rows of M; True / False force.
SHARED_SHIFTS = "auto"
SHARED_SHIFTS_MIN_BLOCK_M = 64


def shared_shifts(block_m: int) -> bool:
    """Whether a registers tile of block_m activation rows takes the shared shifts (SHARED_SHIFTS)."""
    if SHARED_SHIFTS == "auto":
        return block_m >= SHARED_SHIFTS_MIN_BLOCK_M
    if not isinstance(SHARED_SHIFTS, bool):
        raise ValueError(f"gemm_regs.SHARED_SHIFTS is {SHARED_SHIFTS!r}; expected 'auto', True or False")
    return SHARED_SHIFTS


def slot_position(bits: int, j: int, shared: bool) -> tuple[str, int]:
    """Slot j's PTX shift of the PRMT-joined halves and the bit its code lands at inside each fp16 half. shared:
    bits below 10 - w move left by 1, the rest right by 7, so every slot of a half shares one of two shifted copies
    (ptxas computes each once) and its code ends by bit 9 (OR-ed into 1024's mantissa, it adds exactly); else
    every code moves to bit 1 (one shift per slot)."""
    pos = (j * bits) % 16
    if not shared:  # every code to bit 1
        return ("shl.b32 p, p, 1; " if pos == 0 else f"shr.b32 p, p, {pos - 1}; " if pos > 1 else ""), 1
    if pos + 1 + bits <= 10:
        return "shl.b32 p, p, 1; ", pos + 1
    return "shr.b32 p, p, 7; ", pos - 7


def slot_ptx(bits: int, j: int, shared: bool) -> tuple[str, str]:
    """Slot j's PTX block ($0 = its two fp16 2 * code - (2^w - 1) from words $1, $2) and what it computes."""
    from .render import _f16_bits  # (render imports this module)

    nb = 2 ** bits - 1
    sel = "0x7632" if (j * bits) // 16 else "0x5410"  # the high / low halves of the two words, first word low
    shift, at = slot_position(bits, j, shared)
    mask = ((2 ** bits - 1) << at) * 0x10001
    if at == 1:  # 1024 + 2 * code: minus 1024 + nb
        what = f"1024 + 2 * code in each half, minus {1024.0 + nb!r}"
        arith = f"mov.b32 z, {_f16_bits(1024.0 + nb) * 0x10001:#010x}; sub.rn.f16x2 $0, p, z; "
    else:  # 1024 + 2^at * code: times 2^(1 - at), minus 2^(11 - at) + nb (exact: an integer result)
        what = f"1024 + {2 ** at} * code in each half, times {2.0 ** (1 - at)!r} minus {2.0 ** (11 - at) + nb!r}"
        arith = (f"mov.b32 a, {_f16_bits(2.0 ** (1 - at)) * 0x10001:#010x}; "
                 f"mov.b32 z, {_f16_bits(-(2.0 ** (11 - at) + nb)) * 0x10001:#010x}; fma.rn.f16x2 $0, p, a, z; ")
    regs = "p, z" if at == 1 else "p, a, z"
    return (f"{{ .reg .b32 {regs}; prmt.b32 p, $1, $2, {sel}; {shift}"
            f"lop3.b32 p, p, {mask:#010x}, 0x64006400, 0xEA; {arith}}}"), what


def helpers(s) -> list[str]:
    """One jitted function per slot j: _slot_<j>(words) -> fp16 2 * code - (2^w - 1) of slot j, elementwise."""
    w = s.bits
    nb = 2 ** w - 1
    L = [
        "# slot j of each word -> fp16 2 * code - (2^w - 1), exact: PTX on CUDA (two weights per block), plain Triton in the",
        "# CPU interpreter",
        'USE_PTX = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")',
        "",
        "",
    ]
    shared = shared_shifts(s.block_m)
    for j in range(32 // w):
        ptx, what = slot_ptx(w, j, shared)
        cut = ptx.index("lop3")
        L += [
            "@triton.jit",
            f"def _slot_{j}(word):",
            f"    # bits {j * w}..{j * w + w - 1}: {what}",
            "    if USE_PTX:",
            "        return tl.inline_asm_elementwise(",
            f'            "{ptx[:cut]}"',
            f'            "{ptx[cut:]}",',
            '            "=r,r,r", [word], dtype=tl.float16, is_pure=True, pack=2)',
            "    else:",
            f"        code = (word >> {j * w}) & {2 ** w - 1}",
            f"        return (code * 2 + {FP16_MAGIC:#x}).to(tl.int16).to(tl.float16, bitcast=True) - {1024.0 + nb!r}",
            "",
            "",
        ]
    return L


def prologue(s) -> list[str]:
    """Index tensors of the K step, built once: the columns' word offsets and the slot-0 code of each column."""
    W0 = 4 * s.bits
    return [
        "offs_c = tl.arange(0, C)  # column = (tile, word) of the K step",
        f"tile_c = offs_c // {W0}",
        f"code_c = tile_c * 128 + offs_c % {W0}  # code of slot 0 of column c within the K step",
        f"code_c = tl.max_contiguous(tl.multiple_of(code_c, {W0}), {W0})  # runs of {W0}: vector loads of x",
        f"# packing v5: rows in groups of {ROW_GROUP}; a (group, tile) is one run of {ROW_GROUP} rows x {W0} words",
        f"w_rows = w_ptr + (offs_n // {ROW_GROUP})[:, None] * ({ROW_GROUP} * stride_w) + (offs_n % {ROW_GROUP})[:, None] * {W0}",
        f"w_cols = tile_c * {ROW_GROUP * W0} + offs_c % {W0}",
    ]


def loop(s, target: str) -> list[str]:
    """One K step: the words once, then per slot j a tl.dot of its codes with x at k = code_c + j * W0, accumulated
    into `target` (a fresh partial sum 'part' when scales follow per step, else acc)."""
    from .render import _even_load  # unmasked when EVEN (render imports this module)

    W0 = 4 * s.bits
    T = s.block_k // 128
    L = _even_load("words", f"w_rows + step * {T * ROW_GROUP * W0} + w_cols[None, :]",
              f"mask_n[:, None] & (step * {T} + tile_c < plane_words // 4)[None, :]", "0")
    scaled = ""
    if s.a_scales:
        # the row's fp16 scale, read from its int32 widening (ops.widened_scales): a 4-byte load the pipeliner copies
        # asynchronously, which keeps A in registers (an fp16 load here sends A through shared memory at num_stages > 1)
        L += _even_load("sw", f"o_ptr + offs_n[:, None] * stride_s + (step * BLOCK_K) // {s.group_size}",
                        "mask_n[:, None]", "0")
        L.append("scl = (sw & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)")
        scaled = " * scl"
    if target != "acc":
        L.append(f"{target} = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)")
    for j in range(32 // s.bits):
        L.append(f"kx = step * BLOCK_K + {j * W0} + code_c")
        L += _even_load("xt", "x_col + kx[:, None]", "mask_m[None, :] & (kx < K)[:, None]", "0.0")
        L.append(f"{target} = tl.dot(_slot_{j}(words){scaled}, xt, {target})  # slot {j}: codes t * 128 + {j * W0} + i")
    return L
