"""torch.ops.qcomp.qlinear: the quantized linear op (generated Triton kernels on GPU, reference on CPU).

    y = rot(x) @ W_hat^T + bias,   rot(x) = x @ blockdiag(diag(signs) @ H_h / sqrt(h))  (h = had_block, 0: x)

W_hat is the dequantized weight [n, k] (QuantSpec formula) of `packed` (packing.py layout), `scales` and
`offsets` [n, k/g] (g = group_size, -1: per row), `lut` float32 [2**(bits*p), p] (ignored for uniform grids).

Dispatch: CUDA tensors with fp16/bf16 activations run the generated kernel; CPU tensors run the reference
(unpack, dequantize, float32 matmul, output in x.dtype) unless QCOMP_FORCE_TRITON=1 (with
TRITON_INTERPRET=1, for CI) forces the kernel. Blocks larger than MAX_FUSED_HADAMARD are rotated by a
separate pass (rotate_blocks) before a kernel without rotation.

`torch.ops.qcomp.qlinear_fused` holds the fusions of the prologue and epilogue (passes/fuse_glu.py,
passes/fuse_norm.py, passes/fuse_residual.py):
    y = residual + qlinear(rms_norm(x) * norm_weight)       (each part optional)
    y = residual + qlinear(silu(gate) * up)                 (glu=True: x = [gate | up], [..., 2k])
With glu the gemv kernels read the two halves and apply the activation while loading x (KernelSpec.x_glu); above
FUSED_HADAMARD_MAX_M rows, torch computes silu(gate) * up first.
with the residual added to y rounded to x's dtype, as the unfused graph adds it. The gemv kernels apply the norm
themselves (KernelSpec.x_norm: weight * x in the loop, the row's 1 / rms after it, from the sum of squares of the x
they load; equal to the reference up to roundings) and every kernel adds the residual in its epilogue (the HAS_RES
constexpr); above FUSED_HADAMARD_MAX_M rows torch applies the norm first (rms_norm_reference).

The ops are registered with torch.library.custom_op and a fake implementation, so torch.compile,
torch.export and CUDA graphs see one opaque node. Before capturing a CUDA graph, call the op once with the
same shapes so that autotuning (tune.py) has run.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional

import torch
import torch.nn.functional as F

from qcomp.capture.norms import rms_norm_reference

from .hadamard_util import rotate_blocks, signs_for
from .kernel_spec import MAX_FUSED_HADAMARD, KernelSpec, once_scratch_floats
from .packing import ROW_GROUP, packed_shape, padded_codes, row_group_runs, unpack_codes
from .render import load_kernel
from . import gemm_wgmma, precompile, tune, wgmma_stream_k

_GRID_ALIASES = {"uniform": "uniform", "uniform_asym": "uniform_asym", "lut": "lut", "normal": "lut"}
_ACT = {torch.float16: "fp16", torch.bfloat16: "bf16"}
FUSED_HADAMARD_MAX_M = 4  # larger batches rotate x in one separate pass and use the tensor-core variant


def _grid_kind(grid: str) -> str:
    if grid not in _GRID_ALIASES:
        raise ValueError(f"grid must be one of {sorted(_GRID_ALIASES)}, got {grid!r}")
    return _GRID_ALIASES[grid]


def _check(x, packed, scales, lut, offsets, bits, p, group_size, grid, n, k, had_block, glu=False):
    if x.shape[-1] != (2 * k if glu else k):
        if glu:
            raise ValueError(f"x has {x.shape[-1]} features; with glu it holds [gate | up], 2 * k = {2 * k}")
        raise ValueError(f"x has {x.shape[-1]} features, the weight expects k = {k}")
    want = packed_shape(n, k // p, bits * p)
    if tuple(packed.shape) != want or packed.dtype != torch.int32:
        raise ValueError(
            f"packed is {packed.dtype} {tuple(packed.shape)}, expected int32 {want}: pack codes with "
            f"qcomp.codegen.packing.pack_codes(codes, bits * p)"
        )
    g = k if group_size == -1 else group_size
    if k % g or tuple(scales.shape) != (n, k // g):
        raise ValueError(f"scales {tuple(scales.shape)} do not match [n, k/g] = [{n}, {k // g if g else '?'}]")
    kind = _grid_kind(grid)
    if kind == "uniform_asym" and (offsets is None or offsets.shape != scales.shape):
        raise ValueError("grid 'uniform_asym' needs offsets shaped like scales")
    if kind == "lut" and tuple(lut.shape) != (2 ** (bits * p), p):
        raise ValueError(f"lut must be [{2 ** (bits * p)}, {p}] for bits={bits}, p={p}, got {tuple(lut.shape)}")
    if had_block and k % had_block:
        raise ValueError(f"k = {k} is not a multiple of had_block {had_block}")


def reference_weight(packed, scales, lut, offsets, bits, p, group_size, grid, n, k) -> torch.Tensor:
    """Dequantized weight [n, k] in float32 (the QuantSpec formula, no kernel)."""
    codes = unpack_codes(packed, bits * p, n, k // p).long()
    kind = _grid_kind(grid)
    if kind == "uniform":
        vals = (codes.to(torch.float32) - (2**bits - 1) / 2).unsqueeze(-1)
    elif kind == "uniform_asym":
        vals = codes.to(torch.float32).unsqueeze(-1)
    else:
        vals = lut.to(torch.float32)[codes]  # [n, k/p, p]
    g = k if group_size == -1 else group_size
    w = vals.reshape(n, k // g, g) * scales.to(torch.float32).reshape(n, -1, 1)
    if kind == "uniform_asym":
        w = w + offsets.to(torch.float32).reshape(n, -1, 1)
    return w.reshape(n, k)


def glu_reference(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of x = [gate | up] (last dim split in halves), in x's dtype as the unfused graph computes it."""
    k = x.shape[-1] // 2
    return F.silu(x[..., :k]) * x[..., k:]


def reference_qlinear(x, packed, scales, lut, offsets, bias, had_signs, bits, p, group_size, grid, n, k, had_block):
    dev = x.device  # every tensor to x's device (a CPU copy of packed next to CUDA scales could not be combined)
    w = reference_weight(packed.to(dev), scales.to(dev), lut.to(dev), None if offsets is None else offsets.to(dev),
                         bits, p, group_size, grid, n, k)
    xf = x.to(torch.float32)
    if had_block:
        xf = rotate_blocks(xf, had_signs, had_block)
    y = xf @ w.t()
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


FP16_MAX = 65504.0


def check_fp16_scales(scales: torch.Tensor, bits: int, who: str = "a_scales tiles") -> None:
    """Raise ValueError unless `scales` may be multiplied into fp16 weights, as a_scales tiles and the wgmma tile do:
    fp16, and (2^bits - 1) * max|scale| (the largest dequantized value before the kernel's final * 0.5) below fp16's
    max. The range is read once per scales tensor (remembered on it, read again after an in-place write) and not inside
    a CUDA-graph capture (it reads the scales back to the host)."""
    if scales.dtype != torch.float16:
        raise ValueError(f"{who} read fp16 scales, got {scales.dtype}: convert the scales to float16 or use a spec "
                         "that applies them after the dot")
    key = (scales._version, scales.data_ptr(), bits)
    hit = getattr(scales, "_qcomp_fp16_range", None)
    if hit is None or hit[0] != key:
        if scales.is_cuda and torch.cuda.is_current_stream_capturing():
            return
        top = float(scales.abs().amax()) * (2 ** bits - 1) if scales.numel() else 0.0
        why = None if top < FP16_MAX else (
            f"scales up to {top / (2 ** bits - 1):.4g} at {bits} bits overflow fp16 in {who} ({top:.4g} >= "
            f"{FP16_MAX}): use a spec that applies the scales after the dot")
        hit = scales._qcomp_fp16_range = (key, why)
    if hit[1] is not None:
        raise ValueError(hit[1])


def widened_scales(scales: torch.Tensor, bits: int) -> torch.Tensor:
    """fp16 scales [n, groups] as int32 whose low half holds each scale's bits, for KernelSpec.a_scales tiles: they
    read one 4-byte word per scale so that Triton's pipeliner copies it asynchronously (see gemm_regs.loop).

    Cached on the scales tensor and rebuilt when it is written in place; built inside a CUDA-graph capture (no
    warm-up call first) it is part of the graph. check_fp16_scales first."""
    check_fp16_scales(scales, bits)
    if scales.dim() != 2 or scales.stride(-1) != 1:
        raise ValueError(f"a_scales tiles need scales [n, groups] with unit column stride, got shape "
                         f"{tuple(scales.shape)} strides {scales.stride()}")
    key = (scales._version, scales.data_ptr(), bits)
    hit = getattr(scales, "_qcomp_widened", None)
    if hit is not None and hit[0] == key:
        return hit[1]
    wide = torch.empty_strided(scales.shape, scales.stride(), dtype=torch.int32, device=scales.device)
    wide.copy_(scales.view(torch.int16))  # (the same strides: the kernel indexes both with stride_s)
    if not (scales.is_cuda and torch.cuda.is_current_stream_capturing()):
        scales._qcomp_widened = (key, wide)
    return wide


def launch(spec: KernelSpec, split_k: int, x2, packed, scales, lut, offsets, bias, signs, n, k,
           out: Optional[torch.Tensor] = None, warmup: bool = False, norm: Optional[tuple] = None,
           residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run one generated kernel on a 2-D activation x2 [M, k] ([M, 2k] for spec.x_glu); returns [M, n] in x2.dtype.

    norm = (weight [k], eps) for spec.x_norm; residual [M, n] (unit stride) is added to the result. `out` (tests
    poison it with NaN) receives the result. warmup=True compiles the kernel for these arguments (Triton's on-disk
    cache) without running it."""
    m = x2.shape[0]
    if spec.x_norm and norm is None:
        raise ValueError(f"spec {spec.name()} applies an RMSNorm: pass norm=(weight, eps)")
    kern = load_kernel(spec)
    dev = x2.device
    y = out if out is not None else torch.empty(m, n, device=dev, dtype=x2.dtype)
    sg = signs.to(device=dev, dtype=torch.float32).contiguous() if spec.had_block else scales
    if spec.variant == "gemv":
        grid = (triton_cdiv(n, spec.block_n), split_k, triton_cdiv(m, spec.block_m))
    elif spec.stream_k:  # split_k is the programs per SM; they share out the (tile, K step) units
        grid = (wgmma_stream_k.programs(split_k, tune.sm_count(dev), m, n, k, spec.block_m, spec.block_n), 1)
    else:
        grid = (triton_cdiv(m, spec.block_m) * triton_cdiv(n, spec.block_n), split_k)
    # scratch rows for a rotated x that goes through memory (spec.had_scratch): two per program and activation row
    scratch = spec.block_m * 2 * spec.block_k * grid[0] * grid[1] * grid[2] if spec.had_scratch else 0
    if spec.had_once or spec.x_once:  # the x operands of a program's whole K range, made once (render._once_prologue)
        scratch = once_scratch_floats(spec, m, n, k, split_k)
    if spec.stream_k:  # two tile slots per program for the parts of split tiles, a counter per tile
        ws = torch.empty(wgmma_stream_k.workspace_floats(grid[0], spec.block_m, spec.block_n), device=dev,
                         dtype=torch.float32)
        cnt = split_k_counters(dev, triton_cdiv(m, spec.block_m) * triton_cdiv(n, spec.block_n))
    elif split_k > 1:  # the kernel sums the splits itself: fp32 partials and one self-resetting counter per tile
        # (x_norm: and each split's sum of squares of x, [split_k, m], before the scratch rows)
        ws = torch.empty(split_k * m * n + (split_k * m if spec.x_norm else 0) + scratch, device=dev,
                         dtype=torch.float32)
        cnt = split_k_counters(dev, grid[0] * (grid[2] if len(grid) > 2 else 1))
    else:
        ws = torch.empty(m * n + (m if spec.x_norm else 0) + scratch, device=dev, dtype=torch.float32) \
            if scratch else y  # else unused
        cnt = scales  # unused
    if spec.variant == "wgmma":  # Gluon + TMA (gemm_wgmma.py); its scales multiply fp16 weights
        check_fp16_scales(scales, spec.bits, "the wgmma tile")
        gemm_wgmma.launch(spec, kern, grid, x2, packed, scales, bias, y, ws, cnt, n, k, warmup=warmup,
                          per_sm=split_k)
        return y
    stride_w = packed.stride(0)
    if spec.tma_words:  # the kernel reads the words through a TMA descriptor in w_ptr's place
        packed = tma_words_descriptor(spec, packed)
    run = functools.partial(kern.warmup, grid=grid) if warmup else kern[grid]
    pdl = use_pdl(spec, dev)
    nw, eps = norm if spec.x_norm else (scales, 0.0)
    if spec.a_scales:  # the kernel reads the scales as int32 words (o_ptr: a_scales takes the uniform grid only)
        offsets = widened_scales(scales, spec.bits)
    run(
        x2, packed, scales, offsets if offsets is not None else scales, lut, sg,
        bias if bias is not None else scales, y, ws, cnt, nw, residual if residual is not None else y,
        m, n, k, x2.stride(0), y.stride(0), stride_w, padded_codes(k // spec.p) // 32, scales.stride(0),
        residual.stride(0) if residual is not None else 0, float(eps),
        split_k, HAS_BIAS=bias is not None, HAS_RES=residual is not None, EVEN=even_tiles(spec, m, n, k), PDL=pdl,
        num_warps=spec.num_warps, num_stages=spec.num_stages, **({"launch_pdl": True} if pdl else {}),
    )
    return y


def tma_words_descriptor(spec: KernelSpec, packed: torch.Tensor):
    """KernelSpec.tma_words: a host tensor descriptor over the packed words (one plane of w-bit codes, packing v5)
    viewed as [row groups, tiles * 16, 4w]: row q * 16 + r of group G is the run of row r in pack tile q, so one
    [block_n / 16, 16, 4w] box is a K step's words of a program's rows (render._tma_words_load). TMA's bounds
    zero-fill the boxes past the padded rows and tiles."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    runs = row_group_runs(packed, spec.tile_cols, "tma_words")
    return TensorDescriptor(runs, list(runs.shape), list(runs.stride()),
                            [spec.block_n // ROW_GROUP, ROW_GROUP, spec.tile_cols])


@functools.lru_cache(maxsize=None)
def _sm90(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def use_pdl(spec: KernelSpec, device: torch.device) -> int:
    """The kernel's PDL constexpr (render._pdl_wait): pdl_level(device) for gemv kernels, 0 for the tensor-core
    variant. The gemv's weight prefetch then overlaps the end of the kernel before it (the decode step's norm or
    activation kernel); the tensor-core variant waits first thing, so it gains nothing and keeps the plain launch."""
    return pdl_level(device) if spec.variant == "gemv" else 0


PDL_LEVELS = {"0": 0, "1": 1, "2": 2}
DEFAULT_PDL = "2"  # QCOMP_PDL when unset (session 20: bit-equal to level 1 and faster, benchmarks/RESULTS.md)


def pdl_level(device: torch.device) -> int:
    """How the qcomp kernels use programmatic dependent launch (PDL) on `device`: 0 not at all (not CUDA, not
    sm_90+, the interpreter, or QCOMP_PDL=0); 1 (QCOMP_PDL=1) launched with PDL, each kernel waits for the kernel
    before it before reading that kernel's output; 2 (QCOMP_PDL=2, the default) also lets the kernel after it
    start as soon as every program here has passed its wait (`griddepcontrol.launch_dependents`), so that kernel's
    weight prefetch overlaps this kernel's last programs (its own wait still covers all of this kernel)."""
    raw = os.environ.get("QCOMP_PDL", DEFAULT_PDL)
    if raw not in PDL_LEVELS:
        raise ValueError(f"QCOMP_PDL={raw!r}: use 0 (no programmatic dependent launch), 1 (wait for the kernel "
                         "before) or 2 (wait, and let the next kernel start early)")
    level = PDL_LEVELS[raw]
    if level == 0 or device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return 0
    return level if _sm90(device.index if device.index is not None else torch.cuda.current_device()) else 0


def even_tiles(spec: KernelSpec, m: int, n: int, k: int) -> bool:
    """The kernel's EVEN constexpr: every K step, N tile and M tile is whole, so its loop loads need no masks."""
    return k % spec.block_k == 0 and n % spec.block_n == 0 and m % spec.block_m == 0


_COUNTERS: dict[tuple, torch.Tensor] = {}


def split_k_counters(device: torch.device, tiles: int) -> torch.Tensor:
    """int32 zeros, one per output tile, for split-K launches on the current stream of `device`.

    The kernels leave every counter at 0 again, so one buffer serves every launch in stream order; buffers are
    per stream because kernels running at the same time must not share counters. Made outside CUDA-graph
    capture (the executor's eager first call does it): a buffer first needed during capture belongs to that
    graph (its zero-fill is recorded) and is not kept."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < tiles:
        buf = torch.zeros(max(tiles, 8192), device=device, dtype=torch.int32)
        if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            _COUNTERS[key] = buf
    return buf


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _use_triton(x: torch.Tensor) -> bool:
    if x.dtype not in _ACT:
        return False  # the kernels take 16-bit activations; float32 inputs use the reference
    if x.device.type == "cuda":
        return True
    return os.environ.get("QCOMP_FORCE_TRITON") == "1"


def base_spec(x_dtype, bits, p, group_size, grid, had_block, glu: bool = False, norm: bool = False) -> KernelSpec:
    fused = had_block if had_block and had_block <= MAX_FUSED_HADAMARD else 0
    return KernelSpec(bits=bits, grid=_grid_kind(grid), p=p, group_size=group_size, act_dtype=_ACT[x_dtype],
                      had_block=fused, block_m=1, block_k=max(128 * p, fused), x_glu=glu, x_norm=norm)


def rotates_apart(m: int, had_block: int) -> bool:
    """x of M rows is rotated by a separate pass, not in the kernel: a block beyond the fused limit, or a batch above
    FUSED_HADAMARD_MAX_M rows (the gemm variant has no fused rotation: rotating M x k activations once costs far less
    than redoing it for every output tile)."""
    return bool(had_block) and (had_block > MAX_FUSED_HADAMARD or m > FUSED_HADAMARD_MAX_M)


def prologue_in_kernel(m: int, had_block: int) -> bool:
    """Whether a glu (or norm) call of M rows reads silu(gate) * up (rms_norm(x) * weight) inside the kernel: the gemv
    variant (M <= FUSED_HADAMARD_MAX_M) with its rotation, if any, fused; otherwise torch computes it first."""
    return m <= FUSED_HADAMARD_MAX_M and not rotates_apart(m, had_block)


def triton_qlinear(x, packed, scales, lut, offsets, bias, had_signs, bits, p, group_size, grid, n, k, had_block,
                   spec: Optional[KernelSpec] = None, split_k: Optional[int] = None, glu: bool = False,
                   norm: Optional[tuple] = None, residual: Optional[torch.Tensor] = None):
    """The kernel path; `spec`/`split_k` override the autotuned choice (tests, benchmarks). glu: x holds
    [gate | up] (2k features) and the layer reads silu(gate) * up; norm = (weight, eps): the layer reads
    rms_norm(x) * weight; residual [..., n]: added to the output (see the module docstring)."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if glu and not prologue_in_kernel(x2.shape[0], had_block):
        x2, glu = glu_reference(x2), False
    if norm is not None and not prologue_in_kernel(x2.shape[0], had_block):
        x2, norm = rms_norm_reference(x2, norm[0], norm[1]), None
    if rotates_apart(x2.shape[0], had_block):
        x2 = rotate_blocks(x2, had_signs, had_block)
        had_block = 0
    res2 = None
    if residual is not None:
        res2 = residual.reshape(-1, n)
        if res2.stride(-1) != 1:
            res2 = res2.contiguous()
    base = base_spec(x.dtype, bits, p, group_size, grid, had_block, glu, norm is not None)
    calls = precompile.recorder()
    if calls is not None:  # precompile.recording(): note the call, return the reference, compile nothing
        calls.append(precompile.KernelCall.of(base, x2, n, k, scales, offsets, bias, res2 is not None))
        y = _reference(x2, (packed, scales, lut, offsets, bias, had_signs, bits, p, group_size, grid, n, k, had_block),
                       glu, norm, res2)
        return y.reshape(*x.shape[:-1], n)
    lut32 = lut.to(device=x.device, dtype=torch.float32).contiguous()
    args = (x2, packed, scales, lut32, offsets, bias, had_signs, n, k)
    extra = {"norm": norm, "residual": res2}
    if spec is None:
        spec, chosen = tune.choose(base, x2.shape[0], n, k, x.device, lambda s, sk: launch(s, sk, *args, **extra))
        split_k = chosen if split_k is None else split_k
        if spec.a_scales or spec.variant == "wgmma":  # a choice cached for these shapes may meet scales it cannot
            try:  # multiply into fp16 weights (not fp16, or too large)
                check_fp16_scales(scales, spec.bits)
            except ValueError:  # the same tile, or the registers tile of the wgmma's size, scales after each K step
                if spec.stream_k:  # (its split_k was programs per SM)
                    split_k = 1
                spec = dataclasses.replace(spec, variant="gemm", block_m=max(16, spec.block_m), a_regs=True,
                                           a_scales=False, stream_k=False, rolling_wait=False) \
                    if spec.variant == "wgmma" else \
                    dataclasses.replace(spec, a_scales=False)
    elif spec.had_block and not had_block:
        raise ValueError(f"spec {spec.name()} fuses a Hadamard of {spec.had_block} but x was rotated separately")
    elif spec.x_glu != glu or spec.x_norm != (norm is not None):
        raise ValueError(f"spec {spec.name()} has x_glu={spec.x_glu}, x_norm={spec.x_norm} but this call has "
                         f"glu={glu}, norm={norm is not None}")
    y = launch(spec, split_k or 1, *args, **extra)
    return y.reshape(*x.shape[:-1], n)


@torch.library.custom_op("qcomp::qlinear", mutates_args=())
def qlinear_op(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    lut: torch.Tensor,
    offsets: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    had_signs: Optional[torch.Tensor],
    bits: int,
    p: int,
    group_size: int,
    grid: str,
    n: int,
    k: int,
    had_block: int,
) -> torch.Tensor:
    return _dispatch(x, (packed, scales, lut, offsets, bias, had_signs, bits, p, group_size, grid, n, k, had_block),
                     glu=False)


def _dispatch(x, args: tuple, glu: bool, norm: Optional[tuple] = None,
              residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The ops' body: the kernel path where _use_triton(x), else the reference."""
    if _use_triton(x):
        return triton_qlinear(x, *args, glu=glu, norm=norm, residual=residual)
    return _reference(x, args, glu, norm, residual)


def _reference(x, args: tuple, glu: bool, norm: Optional[tuple], residual: Optional[torch.Tensor]) -> torch.Tensor:
    """The unfused function: silu(gate) * up or the RMSNorm first, the qlinear, then residual + y (each in x's
    dtype)."""
    if glu:
        x = glu_reference(x)
    if norm is not None:
        x = rms_norm_reference(x, norm[0], norm[1])
    y = reference_qlinear(x, *args)
    return y if residual is None else residual + y


@qlinear_op.register_fake
def _qlinear_fake(x, packed, scales, lut, offsets, bias, had_signs, bits, p, group_size, grid, n, k, had_block):
    return x.new_empty((*x.shape[:-1], n))


@torch.library.custom_op("qcomp::qlinear_fused", mutates_args=())
def qlinear_fused_op(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    lut: torch.Tensor,
    offsets: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    had_signs: Optional[torch.Tensor],
    norm_weight: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    bits: int,
    p: int,
    group_size: int,
    grid: str,
    n: int,
    k: int,
    had_block: int,
    glu: bool,
    norm_eps: float,
) -> torch.Tensor:
    """residual + qlinear(rms_norm(x) * norm_weight) (or of silu(gate) * up with glu); each part optional."""
    norm = (norm_weight, norm_eps) if norm_weight is not None else None
    return _dispatch(x, (packed, scales, lut, offsets, bias, had_signs, bits, p, group_size, grid, n, k, had_block),
                     glu=glu, norm=norm, residual=residual)


@qlinear_fused_op.register_fake
def _qlinear_fused_fake(x, packed, scales, lut, offsets, bias, had_signs, norm_weight, residual, bits, p, group_size,
                        grid, n, k, had_block, glu, norm_eps):
    return x.new_empty((*x.shape[:-1], n))


def qlinear(x, packed, scales, lut, offsets, bias, *, bits, p, group_size, grid, n, k,
            had_block=0, had_seed=None, had_signs=None, glu=False, norm_weight=None, norm_eps=None, residual=None):
    """y = rot(x) @ W_hat^T + bias for x [..., k] -> [..., n] (see the module docstring); with glu, x [..., 2k] is
    [gate | up] and the layer reads silu(gate) * up; with norm_weight (and norm_eps) it reads
    rms_norm(x) * norm_weight, and with residual [..., n] returns residual + y (these through
    torch.ops.qcomp.qlinear_fused)."""
    _check(x, packed, scales, lut, offsets, bits, p, group_size, grid, n, k, had_block, glu)
    _check_fusions(x, n, k, glu, norm_weight, norm_eps, residual)
    if had_block and had_signs is None:
        had_signs = signs_for(had_block, had_seed)
    if had_block:
        had_signs = had_signs.to(device=x.device, dtype=torch.float32)
    if lut is None:
        lut = torch.zeros(2 ** (bits * p), p, device=x.device)
    return call_op(x, packed, scales, lut, offsets, bias, had_signs if had_block else None, bits, p, group_size, grid,
                   n, k, had_block, glu, norm_weight, norm_eps, residual)


def call_op(x, packed, scales, lut, offsets, bias, had_signs, bits, p, group_size, grid, n, k, had_block,
            glu=False, norm_weight=None, norm_eps=None, residual=None):
    """The registered op for these fusions, on arguments already checked and completed (signs, lut):
    torch.ops.qcomp.qlinear_fused with glu, a norm or a residual, else torch.ops.qcomp.qlinear."""
    if glu or norm_weight is not None or residual is not None:
        return torch.ops.qcomp.qlinear_fused(x, packed, scales, lut, offsets, bias, had_signs, norm_weight, residual,
                                             bits, p, group_size, grid, n, k, had_block, bool(glu),
                                             float(norm_eps or 0.0))
    return torch.ops.qcomp.qlinear(x, packed, scales, lut, offsets, bias, had_signs, bits, p, group_size, grid, n, k,
                                   had_block)


def _check_fusions(x, n, k, glu, norm_weight, norm_eps, residual) -> None:
    if norm_weight is not None:
        if glu:
            raise ValueError("a qlinear reads either silu(gate) * up (glu) or an RMSNorm of x (norm_weight), not both")
        if tuple(norm_weight.shape) != (k,) or norm_weight.dtype != x.dtype:
            raise ValueError(f"norm_weight is {norm_weight.dtype} {tuple(norm_weight.shape)}; the RMSNorm of x needs "
                             f"{x.dtype} [{k}] (x's dtype and features)")
        if not isinstance(norm_eps, float) or norm_eps < 0:
            raise ValueError(f"norm_eps must be a float >= 0 with norm_weight, got {norm_eps!r}")
    if residual is not None and (tuple(residual.shape) != (*x.shape[:-1], n) or residual.dtype != x.dtype):
        raise ValueError(f"residual is {residual.dtype} {tuple(residual.shape)}; it must match the output, {x.dtype} "
                         f"{(*x.shape[:-1], n)}")
