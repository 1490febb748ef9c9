"""The Hopper wgmma tile written in Gluon (KernelSpec variant "wgmma"): text for render.py.

Why: the registers tile (gemm_regs.py) makes one tl.dot per slot, chained on one accumulator. Triton 3.6 makes a
dot asynchronous only if nothing in the loop but the yield uses its result (WGMMAPipeline.cpp,
dotCanBeProperlyAsync), so the chain waits after every slot (SASS `WARPGROUP.DEPBAR.LE gsb0, 0x0`) and the tensor
cores idle while the next slot is dequantized (NOTES_kernels.md, session 27). Gluon states the asynchrony itself:
every slot's `warpgroup_mma(..., is_async=True)` is issued back to back on one accumulator and the K step waits once
(`warpgroup_mma_wait`). The wait takes the slots' A operands as deps: a wgmma reads its A registers until a wait
retires it, and the deps keep those values alive until then. (Waiting one step later, so that a step's wgmmas
overlap the next step's dequantization, computed wrong results on the H100 for tiles of >= 128 activation rows: each
step reuses the same A registers per slot, and the one-step-late wait retires only slot 0 of the step before, so the
next step's dequantization overwrote registers in-flight wgmmas still read. Not kept; NOTES_kernels.md session 28.)

Data flow of one program (BLOCK_N weight rows x BLOCK_M activation rows, acc^T = W x^T):
* x: TMA copies of [BLOCK_M, 64] halves of each K step into a ring of num_stages stages, one mbarrier per stage;
  slot j reads its W0 columns as a sliced, transposed shared-memory view (the wgmma's B operand).
* weights, default (tma_words, _loop_tma): the K step's words come by TMA with its x (one
  [BLOCK_N / 16, 16, W0] copy of packing v5's row-group runs, same mbarrier) and are read from shared memory into the
  wgmma A operand's register layout (DotOperandLayout, k_width 2); slot j's codes are an elementwise PTX block of the
  words (gemm_regs.slot_ptx: packing v5 puts slot j of a tile's W0 words on W0 consecutive codes). The step's wgmmas
  sum into acc_s from scratch and acc += acc_s * scale after the step's wait; the next step's scales are the loop's
  only global loads. Why: with the words loaded into registers a step ahead, ptxas put all the loop's loads on one
  scoreboard and the step's first dequantization waited for it, i.e. for the loads the step had just issued for the
  next one (ncu: 33 % of the stall samples; NOTES_kernels.md, session 30). M=64: 107 -> 80 us.
* weights, a_scales (_loop_tma): as the default, but the slots' values are multiplied by the group scale and every
  wgmma chains on acc: no acc_s, 128 registers at m128 n128 (two programs per SM) where acc_s needs 187.
* stream_k (wgmma_stream_k.py): the TMA loop run over segments of a program's share of the (tile, K step) units.
* weights, a_regs (_loop_regs; where a second accumulator does not fit: 256 rows, or 128 rows at 2 programs/SM):
  the words are loaded into the A layout one step ahead and the slots' values are multiplied by the group scale.
* out: 0.5 * acc (the slot values are 2 * code - (2^w - 1)); split-K partials and their sum as in render.py.

Scope (KernelSpec.validate, eligible): uniform grid, 4- or 8-bit codes (a slot of W0 = 4w >= 16 codes: the wgmma K),
fp16 activations, group size -1 or a multiple of 128, block_k 128, block_n = 16 or 32 * num_warps (one or two m16
row blocks per warp: with two, each warp group's slot wgmma covers 128 weight rows as two m64 wgmmas on the same x view,
so x is read from L2 once per 128 weight rows instead of 64), K a multiple of 128 (launch). CUDA only, sm_90: the
CPU interpreter does not run Gluon, so CI checks the text and a static compile for sm_90 (tests/test_codegen_wgmma.py),
and the H100 the numbers (benchmarks/check_wgmma.py).
"""
from __future__ import annotations

import functools

import torch

from .gemm_regs import shared_shifts, slot_ptx
from .packing import ROW_GROUP, row_group_runs

HALF = 64  # K columns per TMA copy: one 128-byte swizzle row of fp16


def eligible(bits: int, grid: str, p: int, act_dtype: str, group_size: int, had_block: int) -> str | None:
    """None if a spec with these fields may take the wgmma variant, else why not."""
    if grid != "uniform" or p != 1:
        return "needs grid 'uniform' with p = 1"
    if bits not in (4, 8):
        return f"needs 4- or 8-bit codes (a slot of 4 * bits >= 16 codes per row: the wgmma's K), got {bits}"
    if act_dtype != "fp16":
        return "needs fp16 activations"
    if not (group_size == -1 or group_size % 128 == 0):
        return f"needs group_size -1 or a multiple of 128 (one scale per K step), got {group_size}"
    if had_block:
        return "has no fused Hadamard (ops.py rotates x in a separate pass for M > 16)"
    return None


SMEM_BYTES = 232448  # the most shared memory one program may have on sm_90 (227 KB)


def smem_bytes(bits: int, block_m: int, block_n: int, num_stages: int, a_smem: bool) -> int:
    """Shared memory of a TMA-words program: per stage x [block_m, 128] fp16 and the words [block_n, 4 * bits] int32;
    with a_smem also two A buffers [block_n, 128] fp16 (the mbarriers and the epilogue's scratch not counted)."""
    return num_stages * (block_m * 256 + block_n * 16 * bits) + (2 * block_n * 256 if a_smem else 0)


def ring_eligible(bits: int, block_m: int, block_n: int, num_stages: int, words_in_ring: bool) -> str | None:
    """None if the ring of a TMA or registers loop fits one program's shared memory, else why not (a_smem's own
    buffers: smem_eligible)."""
    need = smem_bytes(bits, block_m, block_n, num_stages, False) if words_in_ring else num_stages * block_m * 256
    if need > SMEM_BYTES:
        return (f"needs {need} bytes of shared memory for {num_stages} stages > {SMEM_BYTES}: fewer stages or a "
                f"smaller tile")
    return None


def smem_eligible(bits: int, block_m: int, block_n: int, num_warps: int, num_stages: int, a_regs: bool) -> str | None:
    """None if a wgmma spec may take a_smem (_loop_smem), else why not."""
    if a_regs:
        return "takes a_regs or a_smem, not both (the weights go to the wgmma through registers or shared memory)"
    if block_n != 16 * num_warps:
        return (f"with a_smem needs block_n = 16 * num_warps = {16 * num_warps} (each warp stores the A rows its warp "
                f"group's wgmmas read), got {block_n}")
    if num_stages < 3:
        return f"with a_smem needs num_stages >= 3 (a step's stage is refilled two steps later), got {num_stages}"
    need = smem_bytes(bits, block_m, block_n, num_stages, True)
    if need > SMEM_BYTES:
        return f"with a_smem needs {need} bytes of shared memory > {SMEM_BYTES}: fewer stages or a smaller tile"
    return None


def barrier_name(version: tuple[int, int]) -> str:
    """Gluon's CTA barrier: gl.thread_barrier in triton 3.6, gl.barrier in 3.9 (3.7 / 3.8 not tried)."""
    return "gl.thread_barrier" if version <= (3, 6) else "gl.barrier"


def tma_load_name(version: tuple[int, int]) -> str:
    """Gluon's TMA global-to-shared copy: tma.async_copy_global_to_shared in triton 3.6, tma.async_load in 3.9 (3.7 /
    3.8 not tried)."""
    return "tma.async_copy_global_to_shared" if version <= (3, 6) else "tma.async_load"


def helpers(s) -> list[str]:
    """The slots' PTX blocks as constexpr strings (one per slot j of a word)."""
    L = [
        "# the TMA loop's scales: 16 bits loaded into a 32-bit register, converted reading both halves (ptxas may not",
        "# pack another 16-bit value into it: the step would wait for the load; NOTES_kernels.md, session 30)",
        'LD_U16 = gl.constexpr("ld.global.nc.u16 $0, [$1];")',
        'CVT_LO = gl.constexpr("{ .reg .b16 lo, hi; .reg .f32 l, h; mov.b32 {lo, hi}, $1; cvt.f32.f16 l, lo; '
        'cvt.f32.f16 h, hi; fma.rn.f32 $0, h, 0f00000000, l; }")',
    ] if tma_words(s) and not s.a_smem else []
    L.append("# slot j of each word -> two fp16 2 * code - (2^w - 1) per PTX block (codegen/gemm_regs.slot_ptx)")
    shared = shared_shifts(s.block_m)
    for j in range(32 // s.bits):
        ptx, what = slot_ptx(s.bits, j, shared)
        L += [f"# slot {j}, bits {j * s.bits}..{j * s.bits + s.bits - 1}: {what}", f'SLOT_{j} = gl.constexpr("{ptx}")']
    return L + ["", ""]


def tma_words(s) -> bool:
    """Whether a spec's K loop takes its words through TMA and scales each step's sum (_loop_tma); with a_regs it
    loads them into registers and scales A (_loop_regs: one accumulator, for tiles where a second does not fit)."""
    return not s.a_regs


def _fill_call(s, sn: str, step: str) -> str:
    """The call of fill_stage for K step `step` into stage `sn` (its arguments differ with the loop: tma_words)."""
    if tma_words(s):
        return f"fill_stage(x_desc, w_desc, xs, wsm, bars, {sn}, off_m, {step}, grp0)"
    return f"fill_stage(x_desc, xs, bars, {sn}, off_m, {step})"


def fill_lines(s) -> list[str]:
    """@gluon.jit fill_stage: one K step's x (two [BLOCK_M, 64] halves) and, with tma_words, its words (one
    [BLOCK_N / 16, 16, W0] copy of the row groups' runs) by TMA into stage sn, all counted on the stage's mbarrier."""
    nbytes = "2 * x_desc.block_type.nbytes" + (" + w_desc.block_type.nbytes" if tma_words(s) else "")
    L = [
        "@gluon.jit",
        "def " + _fill_call(s, "sn", "step") + ":",
        f"    mbarrier.expect(bars.index(sn), {nbytes})",
        "    tma.async_copy_global_to_shared(x_desc, [off_m, step * 128], bars.index(sn), xs.index(2 * sn))",
        "    tma.async_copy_global_to_shared(x_desc, [off_m, step * 128 + HALF], bars.index(sn), xs.index(2 * sn + 1))",
    ]
    if tma_words(s):
        L.append(f"    tma.async_copy_global_to_shared(w_desc, [grp0, step * {ROW_GROUP}, 0], bars.index(sn), "
                 "wsm.index(sn))")
    return L + ["", ""]


def ring_alloc_lines(s) -> list[str]:
    """The shared-memory ring (x, and the words with tma_words) and its mbarriers."""
    W0 = 4 * s.bits
    return [
        "    xs = gl.allocate_shared_memory(gl.float16, [STAGES * 2, BLOCK_M, HALF], x_desc.layout)",
        *([f"    wsm = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N // {ROW_GROUP}, {ROW_GROUP}, {W0}], "
           "w_desc.layout)"] if tma_words(s) else []),
        "    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())",
        "    for p in gl.static_range(STAGES):",
        "        mbarrier.init(bars.index(p), count=1)",
    ]


def _ring_lines(s) -> list[str]:
    """The ring (ring_alloc_lines; not with stream_k, whose programs make it once for all their segments) and the fill
    of the first STAGES - 1 steps; with stream_k the stages count on from g, the steps the program ran before."""
    stage = "(g + p) % STAGES" if s.stream_k else "p"
    return [
        *([] if s.stream_k else ring_alloc_lines(s)),
        f"    for p in gl.static_range(STAGES - {2 if s.a_smem or s.rolling_wait else 1}):  # the first steps",
        "        if lo + p < hi:",
        f"            {_fill_call(s, stage, 'lo + p')}",
    ]


def _step_head_lines(s, version: tuple[int, int]) -> list[str]:
    """A K step's start: refill the stage the step before used (its wgmmas finished at the last wait); with
    rolling_wait the stage of step it - 2 (step it - 1's wgmmas are still in flight)."""
    back = 2 if s.rolling_wait else 1
    return [
        "        it = g + step - lo  # (stream_k: the ring's steps count on across the program's tiles)" if s.stream_k
        else "        it = step - lo",
        f"        # the stage of step it - {back} is free: its wgmmas were retired by the waits before this step",
        f"        nxt = step + STAGES - {back}",
        *([f"        {barrier_name(version)}()  # every warp group has retired step it - {back} (the copy must not "
           "overwrite its x)"] if s.num_warps > 4 else []),
        "        if nxt < hi:",
        f"            {_fill_call(s, f'(it + STAGES - {back}) % STAGES', 'nxt')}",
    ]


def _scale_col(s, step: str) -> str:
    """The scales' column of K step `step` (an expression in the kernel): its group, or 0 for per-row scales."""
    return "0" if s.group_size == -1 else f"({step} * 128) // {s.group_size}"


def _slot_issue_lines(s, j: int, step_sum: bool) -> list[str]:
    """Slot j's dequantization and async wgmma. step_sum (the TMA loop): the wgmmas sum into acc_s from scratch at
    slot 0, the scale applied after the step; else they chain on acc, each slot times the scale sc."""
    W0 = 4 * s.bits
    half, off = divmod(j * W0, HALF)
    acc = "acc_s" if step_sum else "acc"
    use = f"use_acc={j > 0}, " if step_sum else ""
    return [
        f"        a{j} = gl.inline_asm_elementwise(SLOT_{j}, \"=r,r,r\", [words], dtype=gl.float16, is_pure=True,",
        "                                         pack=2)" + ("" if step_sum else " * sc"),
        f"        b = xs.index(2 * st + {half}).slice({off}, {W0}, dim=1).permute((1, 0))  # x^T, codes {j * W0}..",
        f"        {acc} = warpgroup_mma(a{j}, b, {acc}, {use}is_async=True)",
    ]


def _slot_lines(s, step_sum: bool) -> list[str]:
    """Each slot's dequantization and async wgmma (_slot_issue_lines), then the step's one wait."""
    slots = 32 // s.bits
    acc = "acc_s" if step_sum else "acc"
    L = [ln for j in range(slots) for ln in _slot_issue_lines(s, j, step_sum)]
    cur = ", ".join(f"a{j}" for j in range(slots))
    # the A operands as deps: their registers stay untouched until the wgmmas that read them are retired
    return L + [f"        {acc}, {cur} = warpgroup_mma_wait(num_outstanding=0, deps=({acc}, {cur}))"]


def _rolling_slot_lines(s) -> list[str]:
    """rolling_wait: slot j's wgmma (_slot_issue_lines) is followed by a wait until at most slots - 1 wgmmas are in
    flight, which retires the oldest: slot j + 1 of the step before (after the last slot: slot 0 of this step), the
    one whose A registers the next dequantization rewrites. No wait drains the step, so the tensor cores run the
    in-flight slots while the next ones (and the next step's head) are dequantized. The wait ends the slot, so acc
    leaves the loop body as the tensor it entered as. A wgmma reads its A registers until it is retired; ptxas keeps
    each slot's registers apart in this loop (no new value lands in registers an in-flight wgmma reads:
    benchmarks/kernel_sass.py's wgmma_a_hazards, tests/test_wgmma_rolling_wait.py) and serializes the wgmmas with a
    full wait where it cannot (a wait one whole step late: NOTES_kernels.md, session 36)."""
    slots = 32 // s.bits
    L = []
    for j in range(slots):
        nj = (j + 1) % slots
        L += _slot_issue_lines(s, j, step_sum=False)
        L.append(f"        acc = warpgroup_mma_wait(num_outstanding={slots - 1}, deps=(acc,))  # retires "
                 + (f"slot {nj} of step it - 1" if nj else "slot 0 of step it"))
    return L


def _loop_regs(s, version: tuple[int, int]) -> list[str]:
    """The K loop of a_regs specs: each step's words loaded into registers one step ahead, the group scale multiplied
    into the A operands (one accumulator: the choice where two would not fit, or would halve the programs per SM)."""
    W0 = 4 * s.bits
    L = [
        "    offs_n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, a_l))",
        "    mask_n = offs_n < N",
        f"    offs_i = gl.arange(0, {W0}, layout=gl.SliceLayout(0, a_l))",
        f"    # packing v5: rows in groups of {ROW_GROUP}; a (group, tile) is one run of {ROW_GROUP} rows x {W0} words",
        f"    w_rows = w_ptr + ((offs_n // {ROW_GROUP}) * ({ROW_GROUP} * stride_w) + (offs_n % {ROW_GROUP}) * {W0})",
        "    w_ptrs = gl.expand_dims(w_rows, 1) + gl.expand_dims(offs_i, 0)",
        "    w_mask = gl.expand_dims(mask_n, 1) & gl.expand_dims(offs_i < 1 << 30, 0)  # (the row mask, broadcast)",
        "    s_ptrs = s_ptr + offs_n * stride_s",
        "",
        *_ring_lines(s),
        "    step = lo",
        "    if EVEN:",
        f"        words = gl.load(w_ptrs + step * {ROW_GROUP * W0})",
        f"        scl = gl.load(s_ptrs + {_scale_col(s, 'step')})",
        "    else:",
        f"        words = gl.load(w_ptrs + step * {ROW_GROUP * W0}, mask=w_mask, other=0)",
        f"        scl = gl.load(s_ptrs + {_scale_col(s, 'step')}, mask=mask_n, other=0.0)",
        "    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=mma)",
        "    for step in range(lo, hi):",
        *_step_head_lines(s, version),
        "        step_n = gl.minimum(step + 1, hi - 1)  # the next step's words and scales (the last reloads its own)",
        "        if EVEN:",
        f"            words_n = gl.load(w_ptrs + step_n * {ROW_GROUP * W0})",
        f"            scl_n = gl.load(s_ptrs + {_scale_col(s, 'step_n')})",
        "        else:",
        f"            words_n = gl.load(w_ptrs + step_n * {ROW_GROUP * W0}, mask=w_mask, other=0)",
        f"            scl_n = gl.load(s_ptrs + {_scale_col(s, 'step_n')}, mask=mask_n, other=0.0)",
        "        st = it % STAGES",
        "        mbarrier.wait(bars.index(st), (it // STAGES) & 1)",
        "        sc = gl.expand_dims(scl, 1)",
    ]
    L += _slot_lines(s, step_sum=False)
    L += [
        "        words = words_n",
        "        scl = scl_n",
    ]
    return L


def _tma_words_head(s, layout: str) -> list[str]:
    """The start of the loops that take the words through TMA (_loop_tma, _loop_smem): the program's rows in
    `layout`'s row slice, their scale pointers, the first row group, then the ring."""
    return [
        f"    offs_n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, {layout}))",
        "    s_ptrs = s_ptr + gl.minimum(offs_n, N - 1) * stride_s  # (tail rows read row N - 1: their words are 0)",
        f"    # words: packing v5 as [row groups, K steps * {ROW_GROUP}, {4 * s.bits}] (w_descriptor), ours from grp0",
        f"    grp0 = pid_n * (BLOCK_N // {ROW_GROUP})",
        "",
        *_ring_lines(s),
    ]


def _loop_tma(s, version: tuple[int, int]) -> list[str]:
    """The default K loop: each step's words come through TMA with its x (fill_stage); the
    step's wgmmas sum into acc_s from scratch and the group scale is applied after the step's wait (acc += acc_s *
    scale). Its only global loads are the next step's scales, so no wait for a load lands before the step's wgmmas
    (NOTES_kernels.md, session 30: loads in registers made every step wait for its own prefetch). With a_scales the
    scale multiplies the slots' A values instead and every wgmma chains on acc: no second accumulator (64 registers
    fewer at 128 activation rows), the same loads; the next step's scale is converted at the step's end as before."""
    W0 = 4 * s.bits
    if s.a_scales:
        L = [
            "    # group scales along A's rows (they multiply each slot's dequantized values)",
            *_tma_words_head(s, "a_l"),
            "    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=mma)",
            f"    scl = gl.load(s_ptrs + {_scale_col(s, 'lo')})",
        ]
    else:
        L = [
            "    # group scales along the accumulator's rows (they scale each K step's wgmma sum, after the step)",
            *_tma_words_head(s, "mma"),
            "    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=mma)",
            "    acc_s = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=mma)  # one K step's sum (its registers reused)",
            f"    scf = gl.load(s_ptrs + {_scale_col(s, 'lo')}).to(gl.float32)",
        ]
    L += [
        "    for step in range(lo, hi):",
        "        # the next step's scales, converted at this step's end: the only global loads of the loop (the words",
        "        # come through TMA), so nothing later shares their scoreboard (NOTES_kernels.md, session 30)",
        "        step_n = gl.minimum(step + 1, hi - 1)",
        f"        scl_n = gl.inline_asm_elementwise(LD_U16, \"=r,l\", [s_ptrs + {_scale_col(s, 'step_n')}],",
        "                                          dtype=gl.int32, is_pure=False, pack=1)",
        *_step_head_lines(s, version),
        "        st = it % STAGES",
        "        mbarrier.wait(bars.index(st), (it // STAGES) & 1)",
        f"        words = wsm.index(st).reshape([BLOCK_N, {W0}]).load(a_l)",
    ]
    cvt = "gl.inline_asm_elementwise(CVT_LO, \"=f,r\", [scl_n], dtype=gl.float32, is_pure=True, pack=1)"
    if s.a_scales:
        L.append("        sc = gl.expand_dims(scl, 1)")
        L += _rolling_slot_lines(s) if s.rolling_wait else _slot_lines(s, step_sum=False)
        L.append(f"        scl = {cvt}.to(gl.float16)")
        if s.rolling_wait:
            L.append("    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))")
        return L
    L += _slot_lines(s, step_sum=True)
    L += [
        "        acc += acc_s * gl.expand_dims(scf, 1)",
        f"        scf = {cvt}",
    ]
    return L


def _words_layout(s) -> str:
    """The blocked layout the a_smem loop reads a step's words [BLOCK_N, W0] in: 8 consecutive words per thread (a
    slot's 8 codes, one 16-byte store) and warp w on rows 16w..16w + 15, the A rows its warp group's wgmmas read."""
    cols = 4 * s.bits // 8  # threads along a row
    return f"gl.BlockedLayout([{16 * cols // 32}, 8], [{32 // cols}, {cols}], [NUM_WARPS, 1], [1, 0])"


def _smem_step(s, version: tuple[int, int], first: bool) -> list[str]:
    """One K step of _loop_smem (first: the peeled step lo, whose wgmmas start the accumulator): wait for the stage,
    dequantize and store A, refill the stage of step it - 2, issue the wgmmas, retire step it - 1's."""
    W0 = 4 * s.bits
    ind = "    " if first else "        "
    L = [
        "step_n = gl.minimum(step + 1, hi - 1)  # the next step's scales (the last reloads its own)",
        f"scl_n = gl.load(s_ptrs + {_scale_col(s, 'step_n')})",
        "st = it % STAGES",
        "mbarrier.wait(bars.index(st), (it // STAGES) & 1)",
        f"words = wsm.index(st).reshape([BLOCK_N, {W0}]).load(w_l)",
        "sc = gl.expand_dims(scl, 1)",
        "ab = it % 2  # this step's A buffer: the wgmmas of step it - 2 that read it were retired last step",
    ]
    for j in range(32 // s.bits):
        L.append(f"a{j} = gl.inline_asm_elementwise(SLOT_{j}, \"=r,r,r\", [words], dtype=gl.float16, is_pure=True, "
                 "pack=2) * sc")
    parts = [f"a{j}" for j in range(32 // s.bits)]
    width = W0
    while width < HALF:  # side by side along K, pairwise: join, then the pair's axis before the columns
        width *= 2
        parts = parts[::2]
        for a in parts:
            b = f"a{int(a[1:]) + width // W0 // 2}"
            L.append(f"{a} = gl.reshape(gl.permute(gl.join({a}, {b}), (0, 2, 1)), [BLOCK_N, {width}])")
    a, b = parts
    L.append(f"asm.index(ab).store(gl.reshape(gl.permute(gl.join({a}, {b}), (2, 0, 1)), [2 * BLOCK_N, HALF]))  # one "
             "store: both K halves")
    use = ", use_acc=h > 0" if first else ""
    L += [
        "fence_async_shared()  # the stores, before the wgmmas (async proxy) read them",
        f"{barrier_name(version)}()  # every warp's A rows are stored; every warp group retired step it - 2",
        "nxt = step + STAGES - 2  # into the stage of step it - 2 (free: retired before this barrier)",
        "if nxt < hi:",
        f"    {_fill_call(s, '(it + STAGES - 2) % STAGES', 'nxt')}",
        "for h in gl.static_range(2):",
        "    a_h = asm.index(ab).slice(h * BLOCK_N, BLOCK_N)  # K half h of this step's A",
        f"    acc = warpgroup_mma(a_h, xs.index(2 * st + h).permute((1, 0)), acc{use}, is_async=True)",
        "acc = warpgroup_mma_wait(num_outstanding=2, deps=(acc,))  # step it - 1's wgmmas retired, it's in flight",
        "scl = scl_n",
    ]
    return [ind + line for line in L]


def _loop_smem(s, version: tuple[int, int]) -> list[str]:
    """The K loop of a_smem specs: the words come through TMA as in _loop_tma; each step's scaled slot values (fp16)
    are stored into one of two shared-memory A buffers and read by SS wgmmas, which stay in flight while the next
    step is dequantized (the wait after a step's wgmmas retires the step before). Register A operands cannot do
    that: ptxas serializes a wgmma whose A registers the next iteration redefines (NOTES_kernels.md, session 30).
    The first step is peeled and starts the accumulator (use_acc=False): with zeros moved into it before the loop,
    ptxas serialized every wgmma (C7515: the loop-skipping path defines the accumulator registers while wgmmas are
    in flight); so every split must have a step (launch checks SPLIT_K <= K / 128)."""
    return [
        f"    w_l: gl.constexpr = {_words_layout(s)}",
        "    a_sl: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)",
        *_tma_words_head(s, "w_l"),
        "    # A: two buffers (K steps alternate) of two [BLOCK_N, 64] halves, 128-byte swizzle rows as x's",
        "    asm = gl.allocate_shared_memory(gl.float16, [2, 2 * BLOCK_N, HALF], a_sl)",
        "    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=mma)  # (not read: the first wgmmas have use_acc=False)",
        f"    scl = gl.load(s_ptrs + {_scale_col(s, 'lo')})",
        "    step = lo",
        "    it = 0",
        *_smem_step(s, version, first=True),
        "    for step in range(lo + 1, hi):",
        "        it = step - lo",
        *_smem_step(s, version, first=False),
        "    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))",
    ]


def out_lines(s, first: str) -> list[str]:
    """The accumulator as y's tile res [BLOCK_M, BLOCK_N] (0.5 * acc^T, stored along n: y's unit stride), its offsets
    and mask, and the bias, added where `first` (a condition, its colon and comment) holds: in the one partial sum of a
    tile that covers its first K step."""
    return [
        "    # out: y[m, n] = 0.5 * acc[n, m] (+ bias), stored along n (y's unit stride) from a blocked layout",
        "    out_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [NUM_WARPS, 1], [1, 0])",
        "    res = gl.convert_layout(gl.permute(acc * 0.5, (1, 0)), out_l)",
        "    offs_mo = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, out_l))",
        "    offs_no = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, out_l))",
        "    mask_mn = gl.expand_dims(offs_mo < M, 1) & gl.expand_dims(offs_no < N, 0)",
        "    if HAS_BIAS:",
        f"        if {first}",
        "            res += gl.expand_dims(gl.load(bias_ptr + offs_no, mask=offs_no < N, other=0.0).to(gl.float32), 0)",
    ]


Y_TILE = "y_ptr + gl.expand_dims(offs_mo, 1) * stride_ym + gl.expand_dims(offs_no, 0)"  # y's addresses of res


def sum_lines(s, parts: list[str], part: str, mask: bool) -> list[str]:
    """The last part's sum of a split tile into y, SUM_ROWS rows at a time (a whole tile of loads with its 64-bit
    addresses held ~100 registers more than the K loop: 255 at m128 n128 instead of 128-187). `parts` opens the loop
    over the parts (in a fixed order), `part` is the address of rows r.. of one (rows_c / cols_c in the tile, offs_mc /
    offs_nc in y); mask:
    the parts are stored masked by M and N (else whole tiles)."""
    tn = min(32, s.block_n // 8)  # threads along a row (8 columns each), then rows: one 8-wide load per thread
    return [
        f"sum_l: gl.constexpr = gl.BlockedLayout([1, 8], [{32 // tn}, {tn}], [NUM_WARPS, 1], [1, 0])",
        f"SUM_ROWS: gl.constexpr = {min(s.block_m, 32 // tn * s.num_warps)}",
        "cols_c = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, sum_l))  # the tile's columns",
        "offs_nc = pid_n * BLOCK_N + cols_c",
        "for r in range(0, BLOCK_M, SUM_ROWS):",
        "    rows_c = r + gl.arange(0, SUM_ROWS, layout=gl.SliceLayout(1, sum_l))  # the tile's rows r..",
        "    offs_mc = off_m + rows_c",
        "    mask_c = gl.expand_dims(offs_mc < M, 1) & gl.expand_dims(offs_nc < N, 0)",
        "    tot = gl.zeros([SUM_ROWS, BLOCK_N], gl.float32, layout=sum_l)",
        *["    " + ln for ln in parts],
        "        tot += gl.load(",
        f"            {part},",
        f"            {'mask=mask_c, other=0.0, ' if mask else ''}cache_modifier=\".cg\")",
        "    y_c = y_ptr + gl.expand_dims(offs_mc, 1) * stride_ym + gl.expand_dims(offs_nc, 0)",
        "    gl.store(y_c, tot.to(gl.float16), mask=mask_c)",
    ]


def kernel_lines(s, version: tuple[int, int]) -> list[str]:
    """The @gluon.jit kernel (signature and body)."""
    bar = barrier_name(version)
    L = [
        "@gluon.jit",
        f"def {s.name()}(",
        f"    x_desc, {'w_desc' if tma_words(s) else 'w_ptr'}, s_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,",
        "    M, N, K, stride_w, stride_s, stride_ym, SPLIT_K,",
        "    HAS_BIAS: gl.constexpr," if tma_words(s) else "    HAS_BIAS: gl.constexpr, EVEN: gl.constexpr,",
        "):",
    ]
    layouts = [
        "    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],",
        "                                                  instr_shape=[16, BLOCK_M, 16])",
        "    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)",
    ]
    loop = _loop_smem(s, version) if s.a_smem else _loop_tma(s, version) if tma_words(s) else _loop_regs(s, version)
    if s.stream_k:
        from . import wgmma_stream_k

        L += wgmma_stream_k.body_lines(s, version, layouts, loop)
        return [line.replace("tma.async_copy_global_to_shared(", tma_load_name(version) + "(") for line in L]
    L += [
        "    # programs: the M blocks of one N block run next to each other (its words stay in L2 for all of them)",
        "    num_m = gl.cdiv(M, BLOCK_M)",
        "    pid = gl.program_id(0)",
        "    pid_m = pid % num_m",
        "    pid_n = pid // num_m",
        "    pid_k = gl.program_id(1)",
        "    n_steps = K // 128",
        "    lo = pid_k * n_steps // SPLIT_K",
        "    hi = (pid_k + 1) * n_steps // SPLIT_K",
        "    off_m = pid_m * BLOCK_M",
        *layouts,
        *loop,
        "    for p in gl.static_range(STAGES):",
        "        mbarrier.invalidate(bars.index(p))",
        "",
        *out_lines(s, "pid_k == 0:  # split-K: one program per output tile adds the bias"),
        "    if SPLIT_K == 1:",
        f"        gl.store({Y_TILE},",
        "                 res.to(gl.float16), mask=mask_mn)",
        "    else:  # split-K: partials to the workspace [SPLIT_K, M, N]; the tile's last split to finish sums them in order",
        "        gl.store(ws_ptr + pid_k * M * N + gl.expand_dims(offs_mo, 1) * N + gl.expand_dims(offs_no, 0), res,",
        "                 mask=mask_mn)",
        f"        {bar}()  # all threads' partials are written before one thread announces them (release)",
        "        done = gl.atomic_add(cnt_ptr + pid, 1, sem=\"acq_rel\", scope=\"gpu\")",
        "        if done == SPLIT_K - 1:",
        "            gl.store(cnt_ptr + pid, 0)  # zero again for the next launch",
        *["            " + ln for ln in sum_lines(
            s, ["for sk in range(0, SPLIT_K):"],
            "ws_ptr + sk * M * N + gl.expand_dims(offs_mc, 1) * N + gl.expand_dims(offs_nc, 0)", True)],
    ]
    return [line.replace("tma.async_copy_global_to_shared(", tma_load_name(version) + "(") for line in L]


def source(s, version: tuple[int, int], header: list[str]) -> str:
    """The module text: header docstring, imports, constants, slot PTX, kernel."""
    head = [
        "from triton.experimental import gluon",
        "from triton.experimental.gluon import language as gl",
        "from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait",
        *(["from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared"] if s.a_smem else []),
        "",
        f"BLOCK_M = gl.constexpr({s.block_m})",
        f"BLOCK_N = gl.constexpr({s.block_n})",
        f"NUM_WARPS = gl.constexpr({s.num_warps})",
        f"STAGES = gl.constexpr({s.num_stages})",
        f"HALF = gl.constexpr({HALF})",
        "",
    ]
    fill = [ln.replace("tma.async_copy_global_to_shared(", tma_load_name(version) + "(") for ln in fill_lines(s)]
    return "\n".join(header + head + helpers(s) + fill + kernel_lines(s, version)) + "\n"


def tma_ready(x2) -> bool:
    """Whether TMA can read x2 [M, K] as it is: 16-bit, unit column stride, 16-byte aligned start and rows."""
    return x2.dtype.itemsize == 2 and x2.stride(-1) == 1 and (x2.stride(0) * 2) % 16 == 0 and x2.data_ptr() % 16 == 0


def x_descriptor(x2, block_m: int):
    """The TMA descriptor of x2 [M, K] for [block_m, 64] copies (128-byte swizzle), checking what TMA needs."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    if not tma_ready(x2):
        raise ValueError(f"the wgmma tile reads x through TMA: it needs a 16-bit x [M, K] with unit column stride and "
                         f"16-byte aligned rows, got {x2.dtype} strides {x2.stride()} at offset {x2.data_ptr() % 16} "
                         f"(make x contiguous, or use a 'gemm' spec)")
    layout = gl.NVMMASharedLayout.get_default_for([block_m, HALF], gl.float16)
    return TensorDescriptor.from_tensor(x2, [block_m, HALF], layout)


def w_descriptor(packed, bits: int, block_n: int):
    """The TMA descriptor of the packed weights (layout v5, int32 [Npad, row_words]) seen as [row groups, K steps * 16,
    W0]: one copy of [block_n / 16, 16, W0] is a program's K step (its row groups' runs of 16 rows x W0 words)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    w0 = 4 * bits
    runs = row_group_runs(packed, w0, "the wgmma tile")
    block = [block_n // ROW_GROUP, ROW_GROUP, w0]
    return TensorDescriptor.from_tensor(runs, block, gl.NVMMASharedLayout.get_default_for(block, gl.int32))


def compile_options(spec, per_sm: int) -> dict:
    """Triton options of a launch beyond num_warps: a stream_k launch of per_sm programs per SM caps the registers so
    that that many programs fit an SM's 65536 (its segment loop holds a few more than the data-parallel kernel)."""
    if not spec.stream_k:
        return {}
    return {"maxnreg": min(255, 65536 // (32 * spec.num_warps * per_sm) // 8 * 8)}


def launch(spec, kern, grid: tuple[int, int], x2, packed, scales, bias, y, ws, cnt, n: int, k: int,
           warmup: bool = False, per_sm: int = 1) -> None:
    """Run a wgmma kernel: y [M, n] = x2 [M, k] @ W^T (+ bias) on grid (M blocks x N blocks, splits; stream_k: the
    programs, 1), with ws / cnt as ops.launch makes them for that grid. warmup: compile it for these arguments without
    running it. per_sm: a stream_k launch's programs per SM (its register cap, compile_options)."""
    if k % 128:
        raise ValueError(f"the wgmma tile needs K a multiple of 128, got {k}: use a 'gemm' spec")
    if spec.a_smem and grid[1] > k // 128:
        raise ValueError(f"an a_smem wgmma tile needs a K step in every split: split {grid[1]} > K / 128 = {k // 128} "
                         f"K steps (use at most {k // 128} splits)")
    if scales.dtype != x2.dtype:
        raise ValueError(f"the wgmma tile reads scales of x's dtype {x2.dtype}, got {scales.dtype}")
    if not tma_ready(x2):  # (a view whose start or rows TMA cannot address: the tuned choice does not depend on it)
        x2 = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device).copy_(x2)
    if spec.stream_k and grid[1] != 1:
        raise ValueError(f"a stream_k launch takes grid (programs, 1), got {grid}")
    run = functools.partial(kern.warmup, grid=grid) if warmup else kern[grid]
    w = w_descriptor(packed, spec.bits, spec.block_n) if tma_words(spec) else packed
    even = {} if tma_words(spec) else {"EVEN": n % spec.block_n == 0}
    options = compile_options(spec, per_sm)
    try:
        run(
            x_descriptor(x2, spec.block_m), w, scales, bias if bias is not None else scales, y, ws, cnt,
            x2.shape[0], n, k, packed.stride(0), scales.stride(0), y.stride(0), grid[1],
            HAS_BIAS=bias is not None, num_warps=spec.num_warps, **even, **options,
        )
    except Exception as e:  # ptxas C7602 (H100, session 35: a_scales m128 at 3 per SM, m256 at 2 and 3)
        if "maxnreg" not in options or "Insufficient registers" not in str(e):
            raise
        raise ValueError(f"{spec.name()} at {per_sm} stream-K programs per SM: their register cap "
                         f"({options['maxnreg']} a thread) is below what the tile needs (ptxas: insufficient "
                         f"registers); use fewer programs per SM (1 lifts the cap to 255) or a smaller tile") from e
