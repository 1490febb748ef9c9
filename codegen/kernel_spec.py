"""KernelSpec: everything that decides the text of one generated qlinear kernel (a frozen dataclass).

Three spec families come from one renderer (render.py):
* variant "gemv": small M (block_m in 1, 2, 4, 8, 16; rows >= M masked). No tl.dot: each program owns
  block_n output rows x a K range (split-K: the last split sums the fp32 partials in order, render._split_k_fixup;
  the split count is a launch argument), keeps elementwise fp32 accumulators [block_n, words] per activation row
  and reduces once at the end; every dequantized weight is reused for all block_m rows. The only variant with a
  fused Hadamard, with x_glu (x rows hold [gate | up] and the kernel reads silu(gate) * up: the MLP's
  activation in the down projection) and with x_norm (the kernel applies the RMSNorm before the layer to x rows).
* variant "gemm": tensor-core tiles, acc^T[block_n, block_m] += dot(W tile, x^T tile): the [block_n, block_k]
  weight tile is dequantized once per K step in registers in natural K order and meets the x^T tile in ONE
  tl.dot per K step (pipelined loads, num_stages); grouped program order for L2 reuse; split-K as above.
  With a_regs (uniform grid, 1/2/4/8-bit codes, fp16): one tl.dot per slot of the packed words instead, so that
  Triton keeps the dequantized weights in registers as the wgmma's A operand (gemm_regs.py); a_scales also
  multiplies the group scales into A, so the K steps' tl.dots chain into one accumulator.

* variant "wgmma" (Hopper only, Gluon: gemm_wgmma.py): the registers tile's dequantization with the slots' wgmmas
  issued asynchronously back to back and one wait per K step; x and the words through TMA into a ring of
  shared-memory stages, each K step's sum scaled after its wait. With a_regs: the words loaded into registers a step
  ahead and the scales multiplied into A instead (block_m > 128 needs it, a_scales or a_smem: one accumulator).
  With a_scales: the TMA loop multiplies the scales into A (one accumulator, no second one for the step's sum).
  With a_smem: the scaled weights are stored into two shared-memory A buffers and SS wgmmas stay in flight across
  K steps. With stream_k: a fixed grid of programs shares out the (tile, K step) units (wgmma_stream_k.py).
  With rolling_wait (on a_scales): a wait after each slot retires only the step before's matching slot, so the
  wgmmas stay in flight across K steps.
  Uniform grid, 4/8-bit codes, fp16, groups of 128k; the tuner tries it on sm_90 GPUs for M > 16 (tune.WGMMA_TILES).

Fields that are not a kernel's text (the shape, the split count) stay out of it, so one compiled kernel
serves every shape.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from . import gemm_regs, gemm_wgmma
from .packing import TRIO, planes

GRID_KINDS = ("uniform", "uniform_asym", "lut")
ACT_DTYPES = ("fp16", "bf16")
VARIANTS = ("gemv", "gemm", "wgmma")
MAX_FUSED_HADAMARD = 256  # largest block rotated inside the kernel; larger blocks use a separate rotation
KERNEL_SPEC_VERSION = 2


class KernelSpecError(ValueError):
    """A KernelSpec whose fields do not make sense together."""


@dataclass(frozen=True)
class KernelSpec:
    bits: int = 4  # bits per weight (a code holds bits * p bits)
    grid: str = "uniform"  # uniform | uniform_asym | lut
    p: int = 1  # weights per code (lut only may use 2)
    group_size: int = 128  # -1: one scale per output row
    act_dtype: str = "fp16"
    had_block: int = 0  # fused Hadamard block size, 0: none
    variant: str = "gemv"
    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    num_warps: int = 4
    num_stages: int = 3
    group_m: int = 8  # gemm: programs grouped along M for L2 reuse
    had_scratch: bool = False  # gemv + fused Hadamard: rotated x goes through a scratch row (see render._hadamard_x)
    x_glu: bool = False  # gemv: x rows hold [gate | up] (2K wide); the kernel reads silu(gate) * up (render._x_expr)
    x_norm: bool = False  # gemv: y of rms_norm(x) * weight: weight * x in the loop, 1 / rms after it (render._norm_ssq)
    a_regs: bool = False  # gemm: one tl.dot per slot, the dequantized weights stay in registers (gemm_regs.py)
    a_scales: bool = False  # a_regs: the row scale multiplies the dequantized weights (A) instead of each K step's
    # partial sum, so every tl.dot accumulates into one chain; the kernel reads the scales widened to int32 (o_ptr).
    # wgmma (its TMA loop): the same product, so every wgmma chains on one accumulator (gemm_wgmma._loop_tma)
    x_ahead: bool = False  # gemv with num_stages >= 2: x is loaded num_stages - 1 K steps ahead with the weights
    # (render._x_ahead_loads) instead of at each step's head; the tuner sets it where it was timed faster
    # (tune.gemv_x_ahead: one row of 2-bit uniform codes)
    l2_ahead: int = 0  # gemv: each K step also asks the L2 for the words of the step l2_ahead ahead (one bulk
    # prefetch per row group and plane, issued by one thread: render._l2_prefetch_lines), so DRAM is read further ahead
    # than the registers' prefetch distance (num_stages - 1) reaches; 0: off
    a_smem: bool = False  # wgmma: the dequantized weights go through shared memory (two A buffers) and SS wgmmas stay
    # in flight while the next K step is dequantized (gemm_wgmma._loop_smem)
    stream_k: bool = False  # wgmma TMA loop: a fixed grid of programs (the launch's split_k per SM) shares out the
    # (output tile, K step) units evenly, so no last wave of tiles runs on part of the GPU; tiles split between
    # programs are summed through the workspace (wgmma_stream_k.py)
    rolling_wait: bool = False  # wgmma TMA loop with a_scales: no wait drains a K step; after each slot's wgmma
    # one wait retires the oldest in flight (the step before's next slot, whose registers the next dequantization
    # rewrites), so the tensor cores run the slots still in flight meanwhile (gemm_wgmma._rolling_slot_lines); needs
    # num_stages >= 3 (a stage stays in use one step longer)
    had_once: bool = False  # gemv + fused Hadamard on the half2 path: each program rotates its K range of x once,
    # before the K loop, each K step at its own power-of-two scale, into scratch as the loop's operands (so 1-4-bit
    # codes take the subnormal path; render._once_prologue); the loop then loads them instead of rotating each step's
    # chunk (no butterflies, layout moves or barriers among its weight loads)
    x_once: bool = False  # gemv on the half2 path without a rotation: had_once's scheme for unrotated x. Each
    # program makes its K range's x operands once, before the K loop, each K step at its own scale xs (the fp16
    # pairs times xs; on subnormal codes the zero point's start and the pairs scaled per bit position), into scratch
    # (render._once_prologue); the loop loads them (with x_ahead, a prefetch distance ahead) instead of loading,
    # pairing and scaling x at each step
    cp_async: bool = False  # gemv: no register prefetch in the text; the K loop is a tl.range with num_stages, so
    # Triton's pipeliner copies its loads (words, x, scales) num_stages - 1 steps ahead into shared memory by cp.async:
    # data in flight takes no registers (render.prefetch_distance). Slower than the register prefetch on the H200
    # (session 37); the tuner tries it only with QCOMP_GEMV_CP_ASYNC=1
    tma_words: bool = False  # gemv, one plane (1, 2, 4, 8-bit codes), one pack tile per K step: the K loop is a
    # tl.range with num_stages whose only pipelined load is each step's words, a [block_n / 16, 16, W] TMA copy of
    # the row groups' runs (the launch passes a tensor descriptor as w_ptr), so num_stages - 1 steps of words are in
    # flight in shared memory and take no registers; scales and x keep the register prefetch one step ahead
    # (render._tma_words_load)
    row_acc: bool = False  # gemv: one fp32 accumulator per output row and activation row: each K step's [block_n, C]
    # partial sums are summed across their columns (shuffles) before they are added (render._acc_add), so the loop
    # keeps block_n instead of block_n x C accumulators: fewer registers, more programs per SM (w4 n64 2 warps: 96 ->
    # 80 registers on sm_90, triton 3.6; 20 more loop instructions per step)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(msg):
            raise KernelSpecError(f"{msg} (in {self})")

        if not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            bad(f"bits must be in 1..8, got {self.bits!r}")
        if self.grid not in GRID_KINDS:
            bad(f"grid must be one of {GRID_KINDS}, got {self.grid!r}")
        if self.p not in (1, 2) or (self.p == 2 and self.grid != "lut"):
            bad("p must be 1, or 2 with grid 'lut'")
        if self.bits * self.p > 8:
            bad(f"a code holds bits*p = {self.bits * self.p} > 8 bits")
        g = self.group_size
        if not (g == -1 or (16 <= g <= 1024 and g % self.p == 0)):
            bad(f"group_size must be -1 or in 16..1024 and a multiple of p, got {g!r}")
        if self.act_dtype not in ACT_DTYPES:
            bad(f"act_dtype must be one of {ACT_DTYPES}, got {self.act_dtype!r}")
        h = self.had_block
        if h and (h & (h - 1) or not 16 <= h <= MAX_FUSED_HADAMARD):
            bad(f"had_block must be 0 or a power of two in 16..{MAX_FUSED_HADAMARD} (larger blocks: rotate separately)")
        if self.variant not in VARIANTS:
            bad(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                bad(f"{name} must be a power of two, got {v}")
        if self.variant == "gemv" and self.block_m > 16:
            bad("variant 'gemv' takes block_m <= 16 (one accumulator set per activation row)")
        if self.variant == "gemm":
            if self.block_m < 16 or self.block_n < 16:
                bad("variant 'gemm' needs block_m, block_n >= 16 (tl.dot)")
            if h:
                bad("variant 'gemm' has no fused Hadamard (ops.py rotates x in a separate pass for M > 16)")
        if self.variant == "wgmma":
            why = gemm_wgmma.eligible(self.bits, self.grid, self.p, self.act_dtype, self.group_size, h)
            if why is None and self.num_warps not in (4, 8, 16):
                why = f"needs num_warps 4, 8 or 16 (1, 2 or 4 warp groups), got {self.num_warps}"
            if why is None and self.block_n not in (16 * self.num_warps, 32 * self.num_warps):
                why = (f"needs block_n = 16 * num_warps or 32 * num_warps = {16 * self.num_warps} or "
                       f"{32 * self.num_warps} (one or two m16 row blocks per warp), got {self.block_n}")
            if why is None and not 8 <= self.block_m <= 256:
                why = f"needs block_m in 8..256 (the wgmma's N), got {self.block_m}"
            if why is None and self.block_k != 128:
                why = f"needs block_k 128 (one pack tile per K step), got {self.block_k}"
            if why is None and self.num_stages < 2:
                why = f"needs num_stages >= 2 (x copied one K step ahead), got {self.num_stages}"
            if why is None and self.a_scales and (self.a_regs or self.a_smem):
                why = ("takes a_scales only on its TMA loop (a_regs' registers loop multiplies the scales into A "
                       "anyway, a_smem's too)")
            if why is None and not self.a_smem:
                why = gemm_wgmma.ring_eligible(self.bits, self.block_m, self.block_n, self.num_stages, not self.a_regs)
            if why is None and self.a_smem:
                why = gemm_wgmma.smem_eligible(self.bits, self.block_m, self.block_n, self.num_warps, self.num_stages,
                                               self.a_regs)
            if why is None and self.stream_k and (self.a_regs or self.a_smem):
                why = "takes stream_k on its TMA loop only (not with a_regs or a_smem)"
            if why is None and self.rolling_wait and not (self.a_scales and self.num_stages >= 3
                                                          and not self.stream_k):
                why = (f"takes rolling_wait only with a_scales, without stream_k and with num_stages >= 3 (a stage "
                       f"is read one K step longer), got a_scales={self.a_scales}, stream_k={self.stream_k}, "
                       f"num_stages={self.num_stages}")
            if why is None and self.block_m > 128 and not (self.a_regs or self.a_smem or self.a_scales):
                why = (f"needs a_regs, a_smem or a_scales at block_m > 128, got {self.block_m} (the TMA loop's second "
                       f"accumulator, one K step's sum, would not fit in registers)")
            if why:
                bad(f"variant 'wgmma' (Gluon, sm_90) {why}")
        if self.had_scratch and not (h and self.variant == "gemv"):
            bad("had_scratch needs the gemv variant with a fused Hadamard")
        if self.cp_async and not (self.variant == "gemv" and self.num_stages >= 2 and not self.x_ahead
                                  and not self.l2_ahead):
            bad("cp_async needs the gemv variant with num_stages >= 2 (the steps in flight) and neither x_ahead nor "
                "l2_ahead (both belong to the register prefetch it replaces)")
        if self.tma_words:
            if not (self.variant == "gemv" and len(planes(self.code_bits)) == 1 and self.widest_plane != TRIO
                    and self.tiles_per_step == 1 and self.num_stages >= 2 and self.block_n >= 16):
                bad("tma_words needs the gemv variant, codes of one plane (bits * p in 1, 2, 4, 8), one pack tile per "
                    "K step (block_k = 128 * p), block_n >= 16 (whole row groups) and num_stages >= 2 (the steps in "
                    "flight)")
            if self.cp_async or self.l2_ahead:
                bad("tma_words takes neither cp_async nor l2_ahead (its TMA ring replaces the words' prefetch)")
        if self.had_once:
            from .render import use_half2

            if not (h and self.variant == "gemv" and use_half2(self)):
                bad("had_once needs the gemv variant with a fused Hadamard on the half2 path (uniform codes of 1..7 "
                    "bits or a 2/4-bit table, scales per row or K step)")
            if self.had_scratch or self.x_norm:
                bad("had_once rotates x once before the K loop: it takes no had_scratch (per-step scratch rows) or "
                    "x_norm (the norm's sum of squares is taken per step)")
        if self.row_acc and self.variant != "gemv":
            bad("row_acc (one accumulator per output row) needs the gemv variant")
        if self.x_once:
            from .render import use_half2

            if not (self.variant == "gemv" and use_half2(self)) or h or self.x_norm:
                bad("x_once needs the gemv variant on the half2 path (uniform codes of 1..7 bits or a 2/4-bit table, "
                    "scales per row or K step) without a fused Hadamard (had_once rotates x once instead) or x_norm "
                    "(the norm's sum of squares is taken per step)")
        if self.x_glu and self.variant != "gemv":
            bad("x_glu needs the gemv variant (ops.py applies silu(gate) * up in torch before a gemm)")
        if self.x_norm and (self.variant != "gemv" or self.x_glu):
            bad("x_norm needs the gemv variant without x_glu (ops.py applies the norm in torch before a gemm)")
        if self.x_ahead and not (self.variant == "gemv" and self.num_stages >= 2 and not self.x_norm):
            bad("x_ahead needs the gemv variant with num_stages >= 2 (a prefetch distance) and no x_norm (whose sum "
                "of squares reads x at each step)")
        if self.l2_ahead and not (self.variant == "gemv" and self.num_stages >= 2 and isinstance(self.l2_ahead, int)
                                  and self.num_stages - 1 < self.l2_ahead <= 16):
            bad(f"l2_ahead needs the gemv variant with num_stages >= 2 and a distance in {max(2, self.num_stages)}..16 "
                f"K steps (beyond the registers' prefetch distance num_stages - 1), got {self.l2_ahead!r}")
        if self.stream_k and self.variant != "wgmma":
            bad("stream_k (units of work shared out over a fixed grid) needs the wgmma variant")
        if self.rolling_wait and self.variant != "wgmma":
            bad("rolling_wait (the wgmma's wait before each slot) needs the wgmma variant")
        if self.a_smem and self.variant != "wgmma":
            bad("a_smem (weights through shared memory) needs the wgmma variant")
        if self.a_regs and self.variant != "wgmma":  # (wgmma: a_regs picks its registers loop, gemm_wgmma.py)
            why = "needs the gemm variant" if self.variant != "gemm" else gemm_regs.eligible(
                self.bits, self.grid, self.p, self.act_dtype, self.scale_per_tile)
            if why is None and self.block_k < gemm_regs.min_block_k(self.bits):
                why = f"needs block_k >= {gemm_regs.min_block_k(self.bits)} at {self.bits} bits (16 codes per slot and row)"
            if why:
                bad(f"a_regs (weights in registers) {why}")
        if self.a_scales and self.variant != "wgmma" and not (self.a_regs and self.group_size != -1
                                                                and self.scale_per_tile):
            bad("a_scales needs a_regs and one scale per (row, K step) from groups: group_size a multiple of "
                "block_k, not -1 (a per-row scale is applied once after the K loop anyway)")
        if self.block_k % (128 * self.p):
            bad(f"block_k must cover whole 128-code pack tiles: a multiple of {128 * self.p}")
        if h and self.block_k % h:
            bad(f"block_k {self.block_k} must be a multiple of the fused Hadamard block {h}")

    # -- derived ------------------------------------------------------------------------------
    @property
    def code_bits(self) -> int:
        return self.bits * self.p

    @property
    def widest_plane(self) -> int:
        """Width of the first (widest) plane of the packed layout: 3 for the trio plane of 3-bit codes."""
        return planes(self.code_bits)[0][0]

    @property
    def tile_cols(self) -> int:
        """Kernel columns per 128-code pack tile (W0): the widest plane's words, or the trio's 4 columns of 3
        words. Column i of a tile holds the codes t = j * W0 + i, slot j = 0 .. col_slots - 1."""
        return 4 if self.widest_plane == TRIO else 4 * self.widest_plane

    @property
    def col_slots(self) -> int:
        """Codes per column and tile (S = 128 / W0)."""
        return 128 // self.tile_cols

    @property
    def tiles_per_step(self) -> int:
        """128-code pack tiles per K step (block_k weights = block_k / p codes)."""
        return self.block_k // self.p // 128

    @property
    def cols_per_step(self) -> int:
        """Kernel columns per row and K step (C): (block_k / p / 128 tiles) x tile_cols."""
        return self.tiles_per_step * self.tile_cols

    @property
    def scale_per_tile(self) -> bool:
        """One scale per (row, K step): scales multiply a partial sum instead of every weight."""
        return self.group_size == -1 or self.group_size % self.block_k == 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        # (added later: off, they stay out, so earlier specs keep their JSON, digest and tuning keys)
        for late in ("a_regs", "a_scales", "x_ahead", "a_smem", "l2_ahead", "stream_k", "rolling_wait", "had_once",
                     "cp_async", "x_once", "tma_words", "row_acc"):
            if not d[late]:
                del d[late]
        return d

    def to_json(self) -> str:
        return json.dumps({"version": KERNEL_SPEC_VERSION, **self.to_dict()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "KernelSpec":
        d = json.loads(text)
        if d.pop("version", None) != KERNEL_SPEC_VERSION:
            raise KernelSpecError(f"KernelSpec JSON version is not {KERNEL_SPEC_VERSION}: {text}")
        return cls(**d)

    def name(self) -> str:
        g = "ch" if self.group_size == -1 else str(self.group_size)
        grid = f"lut{self.p}" if self.grid == "lut" else self.grid
        had = (f"_h{self.had_block}" + ("x" if self.had_scratch else "o" if self.had_once else "")) if self.had_block \
            else ""
        return (
            f"qlinear_{self.variant}_w{self.bits}_{grid}_g{g}_{self.act_dtype}{had}{'_glu' if self.x_glu else ''}"
            f"{'_rms' if self.x_norm else ''}{'_xa' if self.x_ahead else ''}{'_xo' if self.x_once else ''}"
            f"{'_ra' if self.a_regs else ''}{('s' if self.a_regs else '_sa') if self.a_scales else ''}"
            f"{'_as' if self.a_smem else ''}"
            f"{f'_l2p{self.l2_ahead}' if self.l2_ahead else ''}{'_sk' if self.stream_k else ''}"
            f"{'_rw' if self.rolling_wait else ''}{'_cpa' if self.cp_async else ''}"
            f"{'_tma' if self.tma_words else ''}{'_racc' if self.row_acc else ''}"
            f"_m{self.block_m}n{self.block_n}k{self.block_k}w{self.num_warps}s{self.num_stages}"
        )

    def digest(self) -> str:
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]


ONCE_SCRATCH_MAX_BYTES = 64 << 20  # the tuner offers had_once / x_once only where their scratch stays below this


ONCE_SCRATCH_ALIGN = 16  # had_once / x_once scratch starts at a multiple of this many 4-byte words into ws


def once_scratch_floats(spec: KernelSpec, m: int, n: int, k: int, split_k: int) -> int:
    """Scratch of a had_once / x_once gemv launch, in 4-byte words: every program keeps the x operands of its K range
    (the largest split's) for its block_m rows, render.once_operand_count vectors of C words per K step, so x is
    stored once per N tile. had_once (the fp16 pairs): about (n / block_n) * block_m * k * 2 bytes (3.7 MB at M=1,
    28672 x 8192, block_n 128; 1.6 GB at M=16, 28672 x 28672, block_n 16); x_once on subnormal codes one more vector.
    Plus ONCE_SCRATCH_ALIGN words: the scratch starts at the first multiple of them after the split-K partials."""
    from .render import once_operand_count

    cdiv = lambda a, b: -(-a // b)  # noqa: E731
    programs = cdiv(n, spec.block_n) * split_k * cdiv(m, spec.block_m)
    return (spec.block_m * cdiv(cdiv(k, spec.block_k), split_k) * once_operand_count(spec) * spec.cols_per_step * programs
            + ONCE_SCRATCH_ALIGN)
