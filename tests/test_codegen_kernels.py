"""Generated Triton kernels under TRITON_INTERPRET=1 (CPU) against the reference, for every spec family.

Every b in 1..8 x {uniform, lut p=1, lut p=2 (b <= 4)} x group {32, 128} x Hadamard {off, on}, fresh random
inputs per case inside NaN guard regions (a read past a tensor's end shows), the output buffer poisoned
with NaN before each run; plus the GEMM variant (M > 16), split-K, K tails, uniform_asym, per-channel scales,
bias, the separate-rotation fallbacks (blocks above the fused limit; M > 16) and the op's CPU path.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import dataclasses  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from qcomp.codegen.hadamard_util import rotate_blocks, sylvester  # noqa: E402
from qcomp.codegen.kernel_spec import KernelSpec, KernelSpecError  # noqa: E402
from qcomp.codegen.ops import qlinear, reference_qlinear  # noqa: E402
from qcomp.codegen.packing import pack_codes, planes  # noqa: E402
from qcomp.codegen.render import kernel_source, once_operand_count, subnormal_codes  # noqa: E402

from conftest import guarded_launch as launch  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")


def make_case(bits, grid, p, g, had, m, n, k, seed, bias=True):
    gen = torch.Generator().manual_seed(seed)
    cb = bits * p
    codes = torch.randint(0, 2**cb, (n, k // p), dtype=torch.uint8, generator=gen)
    gs = k if g == -1 else g
    d = dict(
        x=torch.randn(m, k, generator=gen).half(),
        packed=pack_codes(codes, cb),
        scales=((torch.rand(n, k // gs, generator=gen) + 0.5) * 0.05).half(),
        lut=torch.sort(torch.randn(2**cb * p, generator=gen))[0].reshape(-1, p),
        offsets=(torch.randn(n, k // gs, generator=gen) * 0.05).half() if grid == "uniform_asym" else None,
        bias=torch.randn(n, generator=gen).half() if bias else None,
        signs=(torch.randint(0, 2, (had,), generator=gen) * 2 - 1).float() if had else None,
    )
    return d


def run_kernel(d, spec, split, n, k):
    m = d["x"].shape[0]
    out = torch.full((m, n), float("nan"), dtype=d["x"].dtype, device=d["x"].device)  # poison: all must be written
    y = launch(spec, split, d["x"], d["packed"], d["scales"], d["lut"].float().contiguous(), d["offsets"], d["bias"],
               d["signs"], n, k, out=out)
    return y


def reference(d, bits, p, g, grid, n, k, had):
    return reference_qlinear(d["x"], d["packed"], d["scales"], d["lut"], d["offsets"], d["bias"], d["signs"],
                             bits, p, g, grid, n, k, had)


def check(y, ref, tol=2e-3):
    assert torch.isfinite(y).all(), "unwritten (NaN) or non-finite outputs"
    err = float((y.float() - ref.float()).norm() / ref.float().norm())
    assert err < tol, f"relative error {err:.2e}"


MATRIX = [
    (b, grid, p, g, had)
    for b in range(1, 9)
    for grid, p in (("uniform", 1), ("lut", 1), ("lut", 2))
    if b * p <= 8
    for g in (32, 128)
    for had in (0, 128)
]


@pytest.mark.parametrize("bits,grid,p,g,had", MATRIX)
def test_gemv_matches_reference(bits, grid, p, g, had):
    n, k, m = 48, 256, 3
    seed = hash((bits, grid, p, g, had)) % 2**31
    d = make_case(bits, grid, p, g, had, m, n, k, seed)
    spec = KernelSpec(bits=bits, grid=grid, p=p, group_size=g, had_block=had, variant="gemv", block_m=4,
                      block_n=32, block_k=128 * p)
    # the subnormal path's uncentered fp16 sums about double the rounding (render.subnormal_codes): w3 g128 measured
    # 1.4e-3 median, 2.3e-3 max over 60 seeds (the seed changes per process: hash() of a str is salted)
    tol = 4e-3 if subnormal_codes(spec) else 2e-3
    check(run_kernel(d, spec, 1, n, k), reference(d, bits, p, g, grid, n, k, had), tol=tol)


@pytest.mark.parametrize("act,x_scale,bits,had", [("fp16", 2e3, 7, 0), ("fp16", 2e3, 4, 128), ("fp16", 1e-4, 3, 0),
                                                  ("bf16", 1e6, 3, 0), ("bf16", 1e6, 5, 128), ("bf16", 1e-15, 2, 0),
                                                  ("bf16", 1.0, 6, 128)])
def test_half2_gemv_any_activation_range(act, x_scale, bits, had):
    """The packed-half2 GEMV scales x per column by a power of two before its fp16 products: activations far
    outside fp16's range (bf16 1e6, tiny 1e-15) or large enough that (code - z) * x sums overflow fp16 (2e3 at
    7 bits: 2 * 63.5 * 2e3 > 65504) still match the float32 reference."""
    n, k, m = 40, 256, 2
    dt = torch.float16 if act == "fp16" else torch.bfloat16
    d = make_case(bits, "uniform", 1, 128, had, m, n, k, seed=bits * 31 + had)
    d["x"] = (d["x"].float() * x_scale).to(dt)
    d["x"][0, 5] *= 8  # one outlier column
    if x_scale > 1:
        d["scales"] = d["scales"] * 0.01  # outputs stay inside fp16's range; the products alone would not
    d["bias"] = None
    spec = KernelSpec(bits=bits, grid="uniform", group_size=128, act_dtype=act, had_block=had, variant="gemv",
                      block_m=2, block_n=16, block_k=128)
    src = kernel_source(spec)  # the half2 path, for fp16 and bf16 activations; one plane: codes as subnormals, or
    sub = bits in (1, 2, 3, 4) and not had  # (with a fused Hadamard) the shift-free magic
    assert ("bq_0 = " in src and "_deq2" not in src) if sub else "_deq2_p1(" in src if bits <= 4 else "_deq2(" in src
    y = run_kernel(d, spec, 1, n, k)
    assert y.dtype == dt
    # bf16: the interpreter's bf16 stores alone cost ~3.7e-3 (the fp32 path measures the same); the subnormal path's
    # uncentered fp16 sums about double the magic path's rounding
    check(y, reference(d, bits, 1, 128, "uniform", n, k, had), tol=(4e-3 if sub else 2e-3) if act == "fp16" else 8e-3)


@pytest.mark.parametrize("bits,grid,p,g,split", [(3, "uniform", 1, 128, 1), (5, "lut", 1, 32, 1),
                                                 (2, "lut", 2, 32, 1), (8, "uniform", 1, 128, 2),
                                                 (1, "uniform", 1, 64, 1), (4, "lut", 1, 256, 1),
                                                 (6, "uniform_asym", 1, 128, 1)])
def test_gemm_variant(bits, grid, p, g, split):
    n, k, m = 40, 1024, 37  # ragged M and N tiles
    d = make_case(bits, grid, p, g, 0, m, n, k, seed=bits * 7 + g)
    w0 = 1 << (bits * p).bit_length() - 1
    bk = max(128 * p, 128 * p * 16 // (4 * w0))  # >= 16 words of the widest plane per K step (tl.dot)
    spec = KernelSpec(bits=bits, grid=grid, p=p, group_size=g, variant="gemm",
                      block_m=32, block_n=32, block_k=bk, group_m=2)
    check(run_kernel(d, spec, split, n, k), reference(d, bits, p, g, grid, n, k, 0))


@pytest.mark.parametrize("bits,grid,p,g,bk", [(4, "uniform", 1, 128, 128), (2, "uniform", 1, -1, 256),
                                              (3, "lut", 2, 256, 256), (5, "uniform", 1, 128, 128),
                                              (8, "uniform", 1, -1, 256), (7, "uniform_asym", 1, 128, 128)])
def test_gemm_one_dot_per_k_step(bits, grid, p, g, bk):
    """Natural-order weight tile + one tl.dot per K step: the exact fp16 magic (row/channel scales after the
    dot), table and per-weight-scale paths, several pack tiles per K step."""
    n, k, m = 72, 1024, 33
    d = make_case(bits, grid, p, g, 0, m, n, k, seed=bits * 13 + bk)
    spec = KernelSpec(bits=bits, grid=grid, p=p, group_size=g, variant="gemm", block_m=32, block_n=64,
                      block_k=bk, group_m=2)
    check(run_kernel(d, spec, 1, n, k), reference(d, bits, p, g, grid, n, k, 0))
    assert kernel_source(spec).count("tl.dot(") == 1


@pytest.mark.parametrize("bits,g,bk,m,split,n,k", [(4, 128, 128, 33, 1, 72, 1152), (4, -1, 256, 16, 2, 72, 1152),
                                                   (8, 128, 128, 20, 1, 72, 1152), (2, 256, 256, 37, 3, 72, 1280),
                                                   (1, -1, 512, 17, 1, 72, 1152), (4, 128, 128, 32, 2, 64, 1024)])
def test_gemm_weights_in_registers(bits, g, bk, m, split, n, k):
    """a_regs: one tl.dot per slot of the packed words (gemm_regs.py), ragged M, N and K (per-row scales: K not a whole
    number of steps), whole tiles (EVEN, unmasked loads), split-K, scales per K step and per row; the CPU interpreter
    runs the plain-Triton twin of each slot's PTX."""
    d = make_case(bits, "uniform", 1, g, 0, m, n, k, seed=bits * 17 + bk + m)
    spec = KernelSpec(bits=bits, grid="uniform", group_size=g, variant="gemm", block_m=16, block_n=32,
                      block_k=bk, group_m=2, a_regs=True)
    check(run_kernel(d, spec, split, n, k), reference(d, bits, 1, g, "uniform", n, k, 0))
    src = kernel_source(spec)
    assert src.count("tl.dot(") == 32 // bits and "tl.reshape" not in src


@pytest.mark.parametrize("bits,g,bk,m,split,n,k", [(4, 128, 128, 33, 1, 72, 1152), (8, 128, 128, 20, 2, 72, 1152),
                                                   (2, 256, 256, 37, 3, 72, 1280), (4, 256, 128, 32, 2, 64, 1024),
                                                   (1, 512, 512, 17, 1, 72, 1536)])
def test_gemm_scales_in_registers(bits, g, bk, m, split, n, k):
    """a_scales: the group scales multiply the slots' fp16 values before each tl.dot (read as int32 words from
    ops.widened_scales), one accumulator for all K steps, * 0.5 after the loop; ragged and whole tiles, split-K,
    a group spanning two K steps, negative scales."""
    d = make_case(bits, "uniform", 1, g, 0, m, n, k, seed=bits * 29 + bk + m)
    d["scales"][::3] *= -1  # the sign bit travels through the int32 widening
    spec = KernelSpec(bits=bits, grid="uniform", group_size=g, variant="gemm", block_m=16, block_n=32,
                      block_k=bk, group_m=2, a_regs=True, a_scales=True)
    check(run_kernel(d, spec, split, n, k), reference(d, bits, 1, g, "uniform", n, k, 0))
    src = kernel_source(spec)
    assert src.count("* scl, xt, acc)") == 32 // bits and "part = " not in src and "o_ptr +" in src


def test_widened_scales_checks():
    from qcomp.codegen.ops import widened_scales

    s = torch.tensor([[0.5, -2.0], [3.0, 1e-3]]).half()
    w = widened_scales(s, 4)
    assert w.dtype == torch.int32 and torch.equal((w & 0xFFFF).to(torch.int16).view(torch.float16), s)
    assert widened_scales(s, 4) is w  # cached
    s[0, 0] = 0.25  # written in place: rebuilt
    assert int(widened_scales(s, 4)[0, 0]) & 0xFFFF == int(torch.tensor(0.25).half().view(torch.int16)) & 0xFFFF
    cols = torch.zeros(2, 4).half()[:, ::2]
    with pytest.raises(ValueError, match="unit column stride"):
        widened_scales(cols, 4)
    with pytest.raises(ValueError, match="fp16 scales"):
        widened_scales(s.float(), 4)
    big = torch.tensor([[300.0]]).half()
    for _ in range(2):  # the failed check is remembered on the tensor and said again
        with pytest.raises(ValueError, match="overflow fp16"):
            widened_scales(big, 8)


_SCALES_IN_A = KernelSpec(bits=4, group_size=128, variant="gemm", block_m=16, block_n=32, block_k=128, group_m=2,
                          a_regs=True, a_scales=True)
_WGMMA = KernelSpec(bits=4, group_size=128, variant="wgmma", block_m=32, block_n=64, block_k=128, num_warps=4,
                    num_stages=3)


@pytest.mark.parametrize("spec, fallback", [
    (_SCALES_IN_A, dataclasses.replace(_SCALES_IN_A, a_scales=False)),
    (_WGMMA, dataclasses.replace(_WGMMA, variant="gemm", a_regs=True)),
    (dataclasses.replace(_WGMMA, a_scales=True), dataclasses.replace(_WGMMA, variant="gemm", a_regs=True)),
    (dataclasses.replace(_WGMMA, a_scales=True, stream_k=True), dataclasses.replace(_WGMMA, variant="gemm", a_regs=True)),
    (dataclasses.replace(_WGMMA, a_scales=True, rolling_wait=True),
     dataclasses.replace(_WGMMA, variant="gemm", a_regs=True)),
])
def test_tuned_scales_in_a_fall_back_for_scales_they_cannot_take(monkeypatch, spec, fallback):
    """A tuned choice that multiplies the scales into fp16 weights (a_scales, or the wgmma tile; cached per shape)
    meeting float32 scales runs the same tile size with the scales after each K step instead of failing; the result
    matches the reference."""
    from qcomp.codegen import ops, tune

    n, k, m = 64, 512, 20
    d = make_case(4, "uniform", 1, 128, 0, m, n, k, seed=5)
    monkeypatch.setattr(tune, "choose", lambda *a, **kw: (spec, 2 if spec.stream_k else 1))
    seen = []
    real = ops.launch
    monkeypatch.setattr(ops, "launch", lambda s, sk, *a, **kw: seen.append((s, sk)) or real(s, sk, *a, **kw))
    y = ops.triton_qlinear(d["x"], d["packed"], d["scales"].float(), d["lut"], None, d["bias"], None, 4, 1, 128,
                           "uniform", n, k, 0)
    assert seen == [(fallback, 1)]  # (a stream_k choice's 2 programs per SM is no split-K count)
    check(y, reference(d, 4, 1, 128, "uniform", n, k, 0))


@pytest.mark.parametrize("fields,why", [(dict(bits=3), "one code plane"), (dict(bits=5), "one code plane"),
                                        (dict(grid="lut"), "uniform"), (dict(act_dtype="bf16"), "fp16"),
                                        (dict(group_size=64), "one scale per"), (dict(bits=2), "block_k >= 256"),
                                        (dict(variant="gemv", block_m=1), "gemm variant")])
def test_gemm_weights_in_registers_scope(fields, why):
    base = dict(bits=4, grid="uniform", group_size=128, variant="gemm", block_m=16, block_n=64, block_k=128)
    with pytest.raises(KernelSpecError, match=why):
        KernelSpec(**{**base, **fields, "a_regs": True})


@pytest.mark.parametrize("fields,why", [(dict(a_regs=False), "a_scales needs a_regs"),
                                        (dict(group_size=-1), "a_scales needs a_regs")])
def test_gemm_scales_in_registers_scope(fields, why):
    base = dict(bits=4, grid="uniform", group_size=128, variant="gemm", block_m=16, block_n=64, block_k=128,
                a_regs=True)
    with pytest.raises(KernelSpecError, match=why):
        KernelSpec(**{**base, **fields, "a_scales": True})


def test_gemm_bf16_source():
    """bf16 activations: the weight tile is made exactly in fp32 and cast (no fp16 magic). Numerics run on the
    GPU only: the Triton 3.9 CPU interpreter's tl.dot on bf16 operands returns garbage (checked by hand)."""
    src = kernel_source(KernelSpec(bits=4, group_size=128, variant="gemm", act_dtype="bf16", block_m=32,
                                   block_k=128))
    assert ".to(tl.bfloat16)" in src and "0x4b000000" in src and "0x6400" not in src
    src16 = kernel_source(KernelSpec(bits=4, group_size=128, variant="gemm", block_m=32, block_k=128))
    assert "0x6400" in src16 and src16.count("tl.dot(") == 1


@pytest.mark.parametrize("bits,grid,had", [(4, "uniform", 0), (3, "lut", 128)])
def test_op_m_above_16_rotates_separately(bits, grid, had, monkeypatch):
    n, k, m = 32, 512, 20
    d = make_case(bits, grid, 1, 128, had, m, n, k, seed=bits)
    kw = dict(bits=bits, p=1, group_size=128, grid=grid, n=n, k=k, had_block=had, had_signs=d["signs"])
    monkeypatch.setenv("QCOMP_FORCE_TRITON", "1")
    y = qlinear(d["x"], d["packed"], d["scales"], d["lut"], None, d["bias"], **kw)
    check(y, reference(d, bits, 1, 128, grid, n, k, had))


def test_gemm_rejects_fused_hadamard():
    with pytest.raises(KernelSpecError, match="no fused Hadamard"):
        KernelSpec(variant="gemm", had_block=128, block_m=16, block_k=128)


@pytest.mark.parametrize("split", [2, 3])
def test_split_k_and_ragged_k(split):
    n, k, m = 24, 384 + 128, 2  # K not a multiple of block_k=256
    d = make_case(4, "uniform", 1, 128, 0, m, n, k, seed=split)
    spec = KernelSpec(bits=4, group_size=128, variant="gemv", block_m=2, block_n=16, block_k=256)
    check(run_kernel(d, spec, split, n, k), reference(d, 4, 1, 128, "uniform", n, k, 0))


@pytest.mark.parametrize("bits,grid,p,g,had,split", [(4, "uniform", 1, 128, 0, 1), (3, "uniform", 1, 128, 128, 2),
                                                    (2, "lut", 2, 32, 0, 1), (8, "uniform", 1, 64, 128, 1),
                                                    (5, "uniform_asym", 1, 32, 0, 2)])
def test_gemv_whole_tiles_run_unmasked(bits, grid, p, g, had, split):
    """Shapes that divide into the tiles launch the EVEN (unmasked) loop; it matches the reference too."""
    from qcomp.codegen.ops import even_tiles

    n, k, m = 64, 512, 4
    d = make_case(bits, grid, p, g, had, m, n, k, seed=bits * 5 + split)
    spec = KernelSpec(bits=bits, grid=grid, p=p, group_size=g, had_block=had, variant="gemv", block_m=4,
                      block_n=32, block_k=128 * p)
    assert even_tiles(spec, m, n, k) and not even_tiles(spec, m - 1, n, k)
    check(run_kernel(d, spec, split, n, k), reference(d, bits, p, g, grid, n, k, had))


@pytest.mark.parametrize("stages", [1, 2, 3, 4])
@pytest.mark.parametrize("bits,had,n,k,split", [(4, 0, 64, 640, 3), (3, 128, 48, 640 + 128, 8), (8, 0, 64, 640, 8),
                                               (2, 0, 40, 384, 1)])
def test_gemv_prefetch_distances(stages, bits, had, n, k, split):
    """The GEMV's software pipeline (weights loaded num_stages - 1 K steps ahead): every distance, programs with
    fewer K steps than the distance, programs with none (split > steps), whole tiles and ragged ones."""
    from qcomp.codegen.ops import even_tiles
    from qcomp.codegen.render import prefetch_distance, word_names

    m = 2
    d = make_case(bits, "uniform", 1, 128, had, m, n, k, seed=stages * 100 + bits)
    spec = KernelSpec(bits=bits, group_size=128, had_block=had, variant="gemv", block_m=2, block_n=16, block_k=128,
                      num_stages=stages)
    assert prefetch_distance(spec) == stages - 1
    src = kernel_source(spec)
    assert ("_ahead" in src) == (stages > 1) and (f"{word_names(spec)[0]}_p{stages - 2}" in src) == (stages > 1)
    assert even_tiles(spec, m, n, k) == (k % 128 == 0 and n % 16 == 0)
    check(run_kernel(d, spec, split, n, k), reference(d, bits, 1, 128, "uniform", n, k, had))


X_AHEAD_CASES = [  # (bits, grid, p, had, num_stages, split, N, K, M); benchmarks/check_k_tails_gpu.py runs them too
    (4, "uniform", 1, 0, 2, 3, 64, 640, 1),  # programs of 1-2 steps: clamped reloads of the last
    (3, "uniform", 1, 128, 3, 8, 48, 768, 2),  # fused Hadamard (its own x buffers per row), splits without steps
    (2, "lut", 2, 0, 2, 1, 40, 640, 1),  # p = 2, a K tail (256-column steps)
    (8, "uniform", 1, 0, 4, 8, 64, 640, 2),
    (5, "uniform_asym", 1, 0, 2, 2, 40, 1152, 3),  # offsets; 9 steps over 2 splits; ragged N and M
]


@pytest.mark.parametrize("bits,grid,p,had,stages,split,n,k,m", X_AHEAD_CASES)
def test_gemv_x_ahead(bits, grid, p, had, stages, split, n, k, m):
    """x_ahead: x loaded num_stages - 1 K steps ahead with the weights (buffers per activation row, clamped at the
    program's last step like the weights) gives the reference's result."""
    d, spec = x_ahead_case(bits, grid, p, had, stages, n, k, m)
    check(run_kernel(d, spec, split, n, k), reference(d, bits, p, 128, grid, n, k, had))


def x_ahead_case(bits, grid, p, had, stages, n, k, m):
    d = make_case(bits, grid, p, 128, had, m, n, k, seed=bits * 10 + stages)
    spec = KernelSpec(bits=bits, grid=grid, p=p, group_size=128, had_block=had, variant="gemv", block_m=4 if m > 2
                      else m, block_n=16, block_k=128 * p, num_stages=stages, x_ahead=True)
    assert "x of K step" in kernel_source(spec)
    return d, spec


L2_AHEAD_CASES = [  # (bits, grid, p, num_stages, l2_ahead, block_n, split, N, K, M); check_k_tails_gpu.py runs them too
    (4, "uniform", 1, 2, 4, 64, 3, 40, 640, 1),  # groups past N (clamped), programs of 1-2 steps
    (3, "uniform", 1, 2, 3, 64, 2, 64, 1024, 1),  # the trio plane (12 words a tile), 8 steps
    (5, "uniform_asym", 1, 3, 6, 32, 2, 48, 1280, 2),  # two planes, register prefetch distance 2
    (2, "lut", 2, 2, 2, 16, 1, 40, 640, 1),  # p = 2: 256-column steps, a K tail
]


@pytest.mark.parametrize("bits,grid,p,stages,l2,bn,split,n,k,m", L2_AHEAD_CASES)
def test_gemv_l2_ahead(bits, grid, p, stages, l2, bn, split, n, k, m):
    """l2_ahead: the bulk L2 prefetches of the words l2_ahead steps ahead (a no-op in the interpreter; on a GPU
    benchmarks/check_k_tails_gpu.py runs them) leave the result as the reference's."""
    d, spec = l2_ahead_case(bits, grid, p, stages, l2, bn, n, k, m)
    check(run_kernel(d, spec, split, n, k), reference(d, bits, p, 128, grid, n, k, 0))


def l2_ahead_case(bits, grid, p, stages, l2, bn, n, k, m):
    d = make_case(bits, grid, p, 128, 0, m, n, k, seed=bits * 10 + l2)
    spec = KernelSpec(bits=bits, grid=grid, p=p, group_size=128, variant="gemv", block_m=m, block_n=bn,
                      block_k=128 * p, num_stages=stages, l2_ahead=l2)
    src = kernel_source(spec)
    planes_ = len(planes(spec.code_bits))
    # per row group and plane: one prefetch per step in the loop, and the steps d..l2 - 1 before it
    assert src.count("_l2_prefetch(pf_grp") == (bn // 16) * planes_ * (1 + l2 - (stages - 1))
    return d, spec


def test_l2_ahead_scope():
    with pytest.raises(KernelSpecError, match="l2_ahead needs the gemv variant with num_stages >= 2 and a distance in 3..16"):
        KernelSpec(variant="gemv", num_stages=3, l2_ahead=2)
    with pytest.raises(KernelSpecError, match="l2_ahead needs the gemv variant"):
        KernelSpec(variant="gemm", block_m=16, l2_ahead=4)
    with pytest.raises(KernelSpecError, match="l2_ahead needs"):
        KernelSpec(variant="gemv", l2_ahead=17)
    with pytest.raises(KernelSpecError, match="l2_ahead needs the gemv variant with num_stages >= 2"):
        KernelSpec(variant="gemv", num_stages=1, l2_ahead=4)
    assert KernelSpec(variant="gemv", num_stages=2, l2_ahead=2).name().endswith("_l2p2_m16n64k128w4s2")
    assert "l2_ahead" not in KernelSpec(variant="gemv").to_json()  # specs without it keep their keys


def test_x_ahead_scope():
    with pytest.raises(KernelSpecError, match="x_ahead needs"):
        KernelSpec(variant="gemv", num_stages=1, x_ahead=True)
    with pytest.raises(KernelSpecError, match="x_ahead needs"):
        KernelSpec(variant="gemm", block_m=16, x_ahead=True)
    with pytest.raises(KernelSpecError, match="x_ahead needs"):
        KernelSpec(variant="gemv", x_norm=True, x_ahead=True)
    assert "x_ahead" not in KernelSpec().to_json() and "_xa_" in KernelSpec(x_ahead=True).name()


def test_gemv_unrolled_loop_matches_reference(monkeypatch, tmp_path):
    """render.GEMV_UNROLL: the K loop unrolled by prefetch distance + 1 (tl.range loop_unroll_factor), over a step
    count that is not a multiple of it, with split-K."""
    import qcomp.codegen.render as render

    monkeypatch.setattr(render, "GEMV_UNROLL", True)
    monkeypatch.setattr(render, "_LOADED", {})
    monkeypatch.setenv("QCOMP_KERNEL_CACHE", str(tmp_path))
    n, k, m = 40, 640, 2
    d = make_case(4, "uniform", 1, 128, 0, m, n, k, seed=3)
    spec = KernelSpec(bits=4, group_size=128, variant="gemv", block_m=2, block_n=16, block_k=128, num_stages=3)
    assert "loop_unroll_factor=3" in kernel_source(spec)
    check(run_kernel(d, spec, 2, n, k), reference(d, 4, 1, 128, "uniform", n, k, 0))


def test_row_scale_load_auto_follows_rows_per_warp(monkeypatch):
    """ROW_SCALE_LOAD "auto" (the default below triton 3.9) takes the inline-asm tile where a program has >= 64 rows
    per warp, the [BLOCK_N] vector load elsewhere; an unknown setting is an error that lists the known ones."""
    import qcomp.codegen.render as render

    monkeypatch.setattr(render, "ROW_SCALE_LOAD", "auto")
    tile = dict(bits=4, group_size=128, variant="gemv", block_m=1, block_k=128)
    assert render.row_scale_load(KernelSpec(**tile, block_n=128, num_warps=2)) == "asm"
    assert render.row_scale_load(KernelSpec(**tile, block_n=256, num_warps=4)) == "asm"
    assert render.row_scale_load(KernelSpec(**tile, block_n=64, num_warps=2)) == "vector"
    assert render.row_scale_load(KernelSpec(**tile, block_n=128, num_warps=8)) == "vector"
    monkeypatch.setattr(render, "ROW_SCALE_LOAD", "shared")
    with pytest.raises(ValueError, match="use one of"):
        render.row_scale_load(KernelSpec(**tile, block_n=64, num_warps=2))


@pytest.mark.parametrize("load", ["vector", "asm"])
@pytest.mark.parametrize("grid,bits", [("uniform", 4), ("uniform_asym", 3), ("uniform", 8)])
def test_gemv_row_scale_loads(grid, bits, load, monkeypatch, tmp_path):
    """The per-row scale loads emitted for triton < 3.9 (render.ROW_SCALE_LOAD: "vector", a [BLOCK_N] load broadcast
    over the columns; "asm", the [BLOCK_N, C] tile through _ld_row_scale, whose CPU twin is tl.load) compute what the
    tile form does, on a ragged N (rows past N read a clamped address) and with split-K."""
    import qcomp.codegen.render as render

    monkeypatch.setattr(render, "ROW_SCALE_LOAD", load)
    monkeypatch.setattr(render, "_LOADED", {})
    monkeypatch.setenv("QCOMP_KERNEL_CACHE", str(tmp_path))
    n, k, m = 40, 384, 2
    d = make_case(bits, grid, 1, 128, 0, m, n, k, seed=bits)
    spec = KernelSpec(bits=bits, grid=grid, group_size=128, variant="gemv", block_m=2, block_n=16, block_k=128,
                      num_stages=2)
    src = kernel_source(spec)
    if load == "vector":
        assert "zero_c" not in src and ".to(tl.float32)[:, None]" in src and "_ld_row_scale" not in src
    else:
        assert "sc_ahead = _ld_row_scale(s_ptr + tl.minimum(offs_n, N - 1)[:, None]" in src
        assert src.count("USE_PTX = ") == 1 and "ld.global.nc.b16" in src
    check(run_kernel(d, spec, 2, n, k), reference(d, bits, 1, 128, grid, n, k, 0))


@pytest.mark.parametrize("variant,m", [("gemv", 3), ("gemm", 20)])
def test_split_k_sums_in_the_kernel(variant, m):
    """Split-K without a zero-filled buffer or cast kernel: partials go to a workspace and the last split of each
    tile sums them in a fixed order, so repeated runs are bitwise equal and every tile counter is 0 again."""
    from qcomp.codegen.ops import split_k_counters

    n, k = 72, 1024
    d = make_case(3, "uniform", 1, 128, 0, m, n, k, seed=m)
    spec = KernelSpec(bits=3, group_size=128, variant=variant, block_m=2 if variant == "gemv" else 16, block_n=16,
                      block_k=128)
    ref = reference(d, 3, 1, 128, "uniform", n, k, 0)
    first = run_kernel(d, spec, 4, n, k)
    check(first, ref)
    for split in (4, 3, 8):
        y = run_kernel(d, spec, split, n, k)
        check(y, ref)
        if split == 4:
            assert torch.equal(y, first)
        assert int(split_k_counters(torch.device("cpu"), 1).abs().sum()) == 0


@pytest.mark.parametrize("bits,g", [(4, 64), (7, -1), (3, 32)])
def test_uniform_asym_and_per_channel(bits, g):
    n, k, m = 32, 256, 4
    d = make_case(bits, "uniform_asym", 1, g, 0, m, n, k, seed=bits)
    spec = KernelSpec(bits=bits, grid="uniform_asym", group_size=g, variant="gemv", block_m=4, block_n=16,
                      block_k=128)
    check(run_kernel(d, spec, 1, n, k), reference(d, bits, 1, g, "uniform_asym", n, k, 0))


def test_fused_hadamard_256():
    n, k, m = 32, 512, 2
    d = make_case(4, "lut", 2, 128, 256, m, n, k, seed=11)
    spec = KernelSpec(bits=4, grid="lut", p=2, group_size=128, had_block=256, variant="gemv", block_m=2,
                      block_n=16, block_k=256)
    check(run_kernel(d, spec, 1, n, k), reference(d, 4, 2, 128, "lut", n, k, 256))


def test_rotation_is_the_project_convention():
    x = torch.randn(3, 64)
    s = (torch.randint(0, 2, (32,)) * 2 - 1).float()
    q = torch.block_diag(*[torch.diag(s) @ sylvester(32) / 32**0.5] * 2)
    torch.testing.assert_close(rotate_blocks(x, s, 32), x @ q, rtol=1e-5, atol=1e-5)


def test_op_entry_forced_triton_matches_cpu_reference(monkeypatch):
    n, k, m = 40, 1024, 5
    d = make_case(3, "uniform", 1, 128, 512, m, n, k, seed=5)  # 512 > fused limit: separate rotation
    kw = dict(bits=3, p=1, group_size=128, grid="uniform", n=n, k=k, had_block=512, had_signs=d["signs"])
    x3 = d["x"].reshape(1, m, k)
    monkeypatch.setenv("QCOMP_FORCE_TRITON", "0")
    ref = qlinear(x3, d["packed"], d["scales"], d["lut"], None, d["bias"], **kw)
    monkeypatch.setenv("QCOMP_FORCE_TRITON", "1")
    y = qlinear(x3, d["packed"], d["scales"], d["lut"], None, d["bias"], **kw)
    assert y.shape == (1, m, n) and y.dtype == torch.float16
    check(y, ref)


def test_op_under_torch_compile_and_export(monkeypatch):
    monkeypatch.setenv("QCOMP_FORCE_TRITON", "0")
    n, k = 16, 128
    d = make_case(4, "uniform", 1, 32, 0, 2, n, k, seed=3)

    class M(torch.nn.Module):
        def forward(self, x):
            return torch.ops.qcomp.qlinear(x, d["packed"], d["scales"], d["lut"], None, d["bias"], None,
                                           4, 1, 32, "uniform", n, k, 0)

    want = M()(d["x"])
    torch.testing.assert_close(torch.compile(M(), backend="eager", fullgraph=True)(d["x"]), want)
    ep = torch.export.export(M(), (d["x"],))
    assert any("qcomp.qlinear" in str(nd.target) for nd in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(d["x"]), want)


def test_bad_inputs_name_the_fix():
    n, k = 16, 128
    d = make_case(4, "uniform", 1, 32, 0, 2, n, k, seed=1)
    with pytest.raises(ValueError, match="pack_codes"):
        qlinear(d["x"], d["packed"][:, :-1], d["scales"], d["lut"], None, None, bits=4, p=1, group_size=32,
                grid="uniform", n=n, k=k)
    with pytest.raises(KernelSpecError, match="multiple of the fused Hadamard block"):
        KernelSpec(had_block=256, block_k=128)
    with pytest.raises(KernelSpecError, match="whole 128-code pack tiles"):
        KernelSpec(p=2, grid="lut", bits=2, block_k=128)


def test_pdl_level_reads_qcomp_pdl(monkeypatch):
    """QCOMP_PDL picks the programmatic-dependent-launch level (0 / 1 / 2); off the GPU it is always 0, and a value
    it does not know is refused with the values it takes."""
    from qcomp.codegen.ops import pdl_level

    for v in ("0", "1", "2"):
        monkeypatch.setenv("QCOMP_PDL", v)
        assert pdl_level(torch.device("cpu")) == 0
    monkeypatch.setenv("QCOMP_PDL", "yes")
    with pytest.raises(ValueError, match=r"QCOMP_PDL='yes': use 0 .*, 1 .* or 2"):
        pdl_level(torch.device("cpu"))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_single_plane_subnormal_codes_are_exact(bits, monkeypatch):
    """Subnormal path (render.subnormal_codes): every pair of a 1/2/4-bit word (and of a 3-bit trio word) is read by
    one AND, after at most one shift per word, as code * 2^(pos - 24) per fp16 half, exactly; x paired as
    x * xs * 2^(9 - pos) keeps below 2^15 for max |x * xs| < 2^6, so every product is code * x * xs * 2^-15; the
    zero point's constant -z * 2^-15 is an fp16."""
    import numpy as np

    import qcomp.codegen.render as render
    from qcomp.codegen.render import (MAGIC_BITS, SUBNORMAL_UNSCALE, SUBNORMAL_X_EXPONENT, half2_x_exponent,
                                      single_plane_pairs, subnormal_codes, subnormal_positions)

    monkeypatch.setattr(render, "HALF2_SUBNORMAL", True)
    spec = KernelSpec(bits=bits, grid="uniform", group_size=128, variant="gemv", block_m=1, block_n=32, block_k=128)
    assert subnormal_codes(spec) and half2_x_exponent(spec) == SUBNORMAL_X_EXPONENT
    pairs = single_plane_pairs(spec)
    assert len(pairs) == 16 // bits and len({s for _, s in pairs if s}) <= 1  # at most one shift per word
    positions = subnormal_positions(spec)
    assert len(positions) == spec.col_slots // 2
    z = (2 ** bits - 1) / 2
    assert float(np.float16(-z / SUBNORMAL_UNSCALE)) == -z / SUBNORMAL_UNSCALE
    for pos in positions:
        assert 0 <= pos and pos + bits <= MAGIC_BITS
        assert 2.0 ** (SUBNORMAL_X_EXPONENT + 1) * 2.0 ** (9 - pos) <= 2 ** 15  # x * xs * 2^(9 - pos) stays finite
        for c in range(2 ** bits):
            h = np.array([c << pos], dtype=np.uint16).view(np.float16)[0]
            assert float(h) == c * 2.0 ** (pos - 24)
            assert float(h) * 2.0 ** (9 - pos) * SUBNORMAL_UNSCALE == c * 2.0 ** 0  # the product's scale is 2^-15


@pytest.mark.parametrize("bits,act,x_scale,m", [(1, "fp16", 1.0, 1), (2, "fp16", 2e3, 2), (3, "fp16", 1e-4, 3),
                                            (4, "fp16", 1.0, 2), (2, "bf16", 1e6, 1), (3, "bf16", 1.0, 2),
                                            (4, "bf16", 1e-15, 1)])
def test_gemv_subnormal_codes_match_reference(bits, act, x_scale, m, monkeypatch, tmp_path):
    """The subnormal path (render.HALF2_SUBNORMAL) on ragged shapes with split-K and activations far outside fp16's
    range; its fp16 sums of uncentered products carry about twice the magic path's rounding. A fused Hadamard keeps
    the magic path (subnormal_codes)."""
    import qcomp.codegen.render as render

    monkeypatch.setattr(render, "HALF2_SUBNORMAL", True)
    monkeypatch.setattr(render, "_LOADED", {})
    monkeypatch.setenv("QCOMP_KERNEL_CACHE", str(tmp_path))
    n, k = 40, 384
    dt = torch.float16 if act == "fp16" else torch.bfloat16
    d = make_case(bits, "uniform", 1, 128, 0, m, n, k, seed=bits * 7 + m)
    d["x"] = (d["x"].float() * x_scale).to(dt)
    d["x"][0, 5] *= 8  # one outlier column
    if x_scale > 1:
        d["scales"] = d["scales"] * 0.01
    spec = KernelSpec(bits=bits, grid="uniform", group_size=128, act_dtype=act, variant="gemv",
                      block_m=4, block_n=16, block_k=128, num_stages=2)
    src = kernel_source(spec)
    assert "zi0 = _mul2(zi0, zc)" in src and "_deq2" not in src and "* 32768.0" in src
    rotated = kernel_source(dataclasses.replace(spec, had_block=64))
    assert "zc = " not in rotated and "_deq2_p1(" in rotated
    check(run_kernel(d, spec, 2, n, k), reference(d, bits, 1, 128, "uniform", n, k, 0),
          tol=4e-3 if act == "fp16" else 8e-3)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_single_plane_magic_is_exact(bits, monkeypatch):
    """Every pair of a 1/2/4-bit word (and of a 3-bit trio word) is read as 1024 + 2^pos * code per fp16 half (one AND-OR) and turned into
    code - z by one fma with 2^-pos and -(1024 * 2^-pos + z): exact for every code at every position used."""
    import numpy as np

    import qcomp.codegen.render as render
    from qcomp.codegen.render import MAGIC_BITS, single_plane_pairs

    monkeypatch.setattr(render, "HALF2_SUBNORMAL", False)  # the magic-1024 path (the default)
    spec = KernelSpec(bits=bits, grid="uniform", group_size=128, variant="gemv", block_m=1, block_n=32, block_k=128)
    pairs = single_plane_pairs(spec)
    assert len(pairs) == 16 // bits and len({s for _, s in pairs}) <= 2  # at most two shifts per word
    if bits == 3:
        assert 1 in {pos for pos, _ in pairs}  # the trio's spare-bit pair is read at position 1
    z = (2 ** bits - 1) / 2
    for pos, _ in pairs:
        assert 1 <= pos and pos + bits <= MAGIC_BITS
        a, b = np.float16(2.0 ** -pos), np.float16(-(1024.0 * 2.0 ** -pos + z))
        assert float(a) == 2.0 ** -pos and float(b) == -(1024.0 * 2.0 ** -pos + z)  # both constants are fp16
        for c in range(2 ** bits):
            h = np.array([(c << pos) | 0x6400], dtype=np.uint16).view(np.float16)[0]
            assert float(h * a + b) == c - z


@pytest.mark.parametrize("variant,grid,g,had", [("gemv", "uniform", 128, 128), ("gemv", "uniform_asym", 64, 0),
                                                ("gemv", "lut", -1, 0), ("gemm", "uniform", 128, 0),
                                                ("gemm", "lut", 64, 0), ("gemm", "uniform_asym", -1, 0)])
def test_trio_kernels_read_every_slot(variant, grid, g, had):
    """3-bit codes (one trio plane, packing v5) on every kernel path: random codes over ragged N and K, then codes
    only in the spare-bit slots (15 and 31 of each column, three words each) on top of random ones elsewhere."""
    from qcomp.codegen.packing import pack_codes

    n, k = 44, 384
    m = 3 if variant == "gemv" else 20
    spec = KernelSpec(bits=3, grid=grid, group_size=g, had_block=had, variant=variant,
                      block_m=4 if variant == "gemv" else 16, block_n=16 if variant == "gemv" else 32, block_k=128)
    d = make_case(3, grid, 1, g, had, m, n, k, seed=len(variant) * 31 + len(grid) * 7 + g % 97)
    check(run_kernel(d, spec, 2, n, k), reference(d, 3, 1, g, grid, n, k, had))
    codes = torch.randint(0, 8, (n, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    spare = torch.tensor([(t // 4) % 16 == 15 for t in range(k)])  # slots 15 and 31 of every column
    codes[:, spare] = torch.tensor([7, 5, 6, 1], dtype=torch.uint8).repeat(n * int(spare.sum()) // 4 + 1)[
        : n * int(spare.sum())].reshape(n, -1)
    d["packed"] = pack_codes(codes, 3)
    check(run_kernel(d, spec, 1, n, k), reference(d, 3, 1, g, grid, n, k, had))


@pytest.mark.parametrize("bits,grid,p,act,m,split,k", [(3, "uniform", 1, "bf16", 1, 1, 512), (2, "uniform", 1, "bf16", 4, 3, 640),
                                                      (4, "uniform", 1, "fp16", 2, 8, 512), (5, "lut", 1, "fp16", 1, 2, 384),
                                                      (2, "lut", 2, "fp16", 3, 1, 256), (8, "uniform_asym", 1, "bf16", 2, 2, 384)])
def test_gemv_rotated_x_through_scratch(bits, grid, p, act, m, split, k):
    """had_scratch: the rotated x of each K step goes through a scratch row of the split-K workspace and is read
    back in the words' layout (two rows per program and activation row, by step parity): every width, grid, row
    count and split, ragged N; the result matches the reference and the kernel without the scratch."""
    n = 40
    dt = torch.float16 if act == "fp16" else torch.bfloat16
    d = make_case(bits, grid, p, 128, 128, m, n, k, seed=bits * 7 + m)
    d["x"] = d["x"].to(dt)
    base = KernelSpec(bits=bits, grid=grid, p=p, group_size=128, act_dtype=act, had_block=128, variant="gemv",
                      block_m=1 << (m - 1).bit_length(), block_n=16, block_k=128 * p)
    spec = KernelSpec(**{**base.to_dict(), "had_scratch": True})
    assert "tl.store(scr" in kernel_source(spec) and "tl.store(scr" not in kernel_source(base)
    assert spec.name() != base.name()
    ref = reference(d, bits, p, 128, grid, n, k, 128)
    tol = 2e-3 if act == "fp16" else 8e-3
    y = run_kernel(d, spec, split, n, k)
    check(y, ref, tol=tol)
    assert torch.allclose(y.float(), run_kernel(d, base, split, n, k).float(), rtol=0, atol=1e-2)


@pytest.mark.parametrize("bits,grid,act,m,split,k,had,g", [
    (2, "uniform", "fp16", 1, 3, 640, 128, 128),  # the M=1 decode case; 5 K steps over 3 splits (1, 2, 2)
    (3, "uniform", "bf16", 1, 1, 512, 128, 128),  # trio words, bf16 x
    (4, "uniform", "fp16", 2, 4, 384, 64, 128),  # two activation rows, a smaller block, more splits than steps
    (1, "uniform", "bf16", 3, 2, 768, 256, 256),  # ragged rows, the largest fused block (K steps of 256)
    (5, "uniform", "fp16", 1, 2, 384, 128, 128),  # two planes
    (6, "uniform", "bf16", 4, 2, 384, 128, -1),  # two planes, four rows, one scale per row
    (4, "lut", "fp16", 1, 2, 512, 128, 128),  # a 4-bit table in registers
])
def test_gemv_rotated_x_once_per_program(bits, grid, act, m, split, k, had, g):
    """had_once: each program rotates its K range of x once, before the K loop, into scratch as the loop's operands
    (each K step at its own scale; single-plane codes on the subnormal path), and the loop loads them: every width
    class (1-bit, trio, two planes, table), row count and split (one with more splits than K steps), ragged N and M;
    the result matches the reference, and the per-step rotation up to rounding."""
    n = 40
    dt = torch.float16 if act == "fp16" else torch.bfloat16
    d = make_case(bits, grid, 1, g, had, m, n, k, seed=bits * 13 + m + k)
    d["x"] = d["x"].to(dt)
    base = KernelSpec(bits=bits, grid=grid, group_size=g, act_dtype=act, had_block=had, variant="gemv",
                      block_m=1 << (m - 1).bit_length(), block_n=16, block_k=max(128, had), num_warps=2,
                      num_stages=2)
    spec = dataclasses.replace(base, had_once=True)
    src = kernel_source(spec)
    assert src.count("tl.store(scr_once") == spec.block_m * once_operand_count(spec) and "xt = _xpair" in src
    assert ("zi0 = tl.load(scr_once" in src) == subnormal_codes(spec) == (grid == "uniform" and bits in (1, 2, 3, 4))
    loop = src[src.index("for step in range(step_lo, step_hi):", src.index("tl.debug_barrier()")):]
    assert "tl.split" not in loop and "_xpair" not in loop  # no rotation left in the K loop
    assert spec.name() == base.name().replace(f"_h{had}_", f"_h{had}o_")
    ref = reference(d, bits, 1, g, grid, n, k, had)
    y = run_kernel(d, spec, split, n, k)
    check(y, ref, tol=half2_tol(spec))
    check(y, run_kernel(d, base, split, n, k), tol=half2_tol(spec))  # (other arithmetic: subnormal codes, x scales)


def test_had_once_scope():
    """had_once needs the half2 path's pairs and a rotation, and takes neither per-step x option (scratch rows, norm)."""
    ok = dict(bits=2, variant="gemv", block_m=1, block_n=64, block_k=128, had_block=128, had_once=True)
    KernelSpec(**ok)
    for bad in ({"had_block": 0}, {"bits": 8}, {"variant": "gemm", "block_m": 16}, {"had_scratch": True},
                {"x_norm": True}):
        with pytest.raises(KernelSpecError, match="had_once"):
            KernelSpec(**{**ok, **bad})


X_ONCE_CASES = [  # (bits, grid, act, m, split, k, group, x_ahead); N = 40
    (2, "uniform", "fp16", 1, 3, 640, 128, True),  # the w2 pick's form: subnormal codes, x_ahead, 5 steps / 3 splits
    (2, "uniform", "fp16", 3, 8, 384, 128, False),  # more splits than K steps, ragged rows
    (1, "uniform", "bf16", 2, 2, 512, 128, True),  # bf16 pairs, subnormal 1-bit codes
    (3, "uniform", "fp16", 1, 2, 512, -1, True),  # trio words and their spare-bit pair, one scale per row
    (4, "uniform", "fp16", 4, 1, 2304, 128, False),  # 18 K steps: three iterations of the prologue, the last partial
    (5, "uniform", "bf16", 1, 2, 384, 128, True),  # two planes (the magic path: pairs only)
    (2, "lut", "fp16", 2, 2, 512, 128, True),  # a 2-bit table in registers
]


def half2_tol(spec: KernelSpec) -> float:
    """Relative error bound of a half2 gemv against the fp32 reference: fp16 x 2e-3, subnormal codes 4e-3 (their fp16
    products round at an absolute 2^-25, test_gemv_half2), bf16 x 8e-3."""
    return (4e-3 if subnormal_codes(spec) else 2e-3) if spec.act_dtype == "fp16" else 8e-3


def x_once_case(bits, grid, act, m, k, g, ahead, n=40):
    """Inputs and the x_once spec of an X_ONCE_CASES row, and its twin that makes x's operands at each step."""
    d = make_case(bits, grid, 1, g, 0, m, n, k, seed=bits * 11 + m + k)
    d["x"] = d["x"].to(torch.float16 if act == "fp16" else torch.bfloat16)
    base = KernelSpec(bits=bits, grid=grid, group_size=g, act_dtype=act, variant="gemv",
                      block_m=1 << (m - 1).bit_length(), block_n=16, block_k=128, num_warps=2, num_stages=2,
                      x_ahead=ahead)
    return d, dataclasses.replace(base, x_once=True), base


@pytest.mark.parametrize("bits,grid,act,m,split,k,g,ahead", X_ONCE_CASES)
def test_gemv_x_operands_once_per_program(bits, grid, act, m, split, k, g, ahead):
    """x_once: each program makes its K range's x operands (pairs times xs; subnormal codes: zero-point start and
    the pairs per bit position) once, before the K loop, into scratch, and the loop loads them (with x_ahead, a step
    ahead): every width class, rows, splits (one with more splits than K steps), ragged N and M; the result matches
    the reference, and the kernel that makes them at each step up to rounding (random x: about one scale for all)."""
    n = 40
    d, spec, base = x_once_case(bits, grid, act, m, k, g, ahead, n)
    src = kernel_source(spec)
    loop = src[src.index("for step in range(step_lo, step_hi):", src.index("tl.debug_barrier()")):]
    assert src.count("tl.store(scr_once") > 0 and "x_ptr" not in loop and "_pack(" not in loop
    assert ("zi0 = zi0_p0" if ahead else "zi0 = tl.load(scr_once") in loop if subnormal_codes(spec) else "zi0" not in src
    assert spec.name() == base.name().replace("_m" + base.name().split("_m")[-1], "_xo_m" + base.name().split("_m")[-1])
    y = run_kernel(d, spec, split, n, k)
    check(y, reference(d, bits, 1, g, grid, n, k, 0), tol=half2_tol(spec))
    assert torch.allclose(y.float(), run_kernel(d, base, split, n, k).float(), rtol=0, atol=1e-2)


@pytest.mark.parametrize("bits,had", [(2, 0), (4, 0), (3, 0), (2, 128), (4, 128)])
def test_once_scales_each_k_step(bits, had):
    """x_once / had_once scale each K step's x by its own power of two: with one K step of x 512x the rest (and its
    weights' scales tiny, so the other steps carry y), the program-wide scale leaves the other steps' fp16 products
    near the subnormals (w2: 1.5e-2 relative error); the per-step scale keeps them at the usual ~1e-3."""
    n, k = 40, 1024
    d = make_case(bits, "uniform", 1, 128, had, 1, n, k, seed=7, bias=False)
    d["x"][:, :128] *= 512
    d["scales"][:, 0] = 1e-6
    base = KernelSpec(bits=bits, variant="gemv", block_m=1, block_n=16, block_k=128, num_warps=2, num_stages=2,
                      had_block=had)
    once = dataclasses.replace(base, **{"had_once" if had else "x_once": True})
    ref = reference(d, bits, 1, 128, "uniform", n, k, had)
    check(run_kernel(d, once, 1, n, k), ref, tol=2e-3)
    if not had:  # (the per-step rotation is on the magic path, whose error stays low at this range)
        with pytest.raises(AssertionError, match="relative error"):
            check(run_kernel(d, base, 1, n, k), ref, tol=4e-3)


def test_had_once_with_x_ahead():
    """had_once with x_ahead: the loop loads the rotated operands a step ahead; the same result as had_once alone."""
    d = make_case(2, "uniform", 1, 128, 128, 1, 40, 640, seed=5)
    spec = KernelSpec(bits=2, variant="gemv", block_m=1, block_n=16, block_k=128, num_warps=2, num_stages=2,
                      had_block=128, had_once=True)
    ahead = dataclasses.replace(spec, x_ahead=True)
    assert "xq0_0 = xq0_0_p0" in kernel_source(ahead) and "xinv0 = xinv0_p0" in kernel_source(ahead)
    y = run_kernel(d, ahead, 3, 40, 640)
    check(y, reference(d, 2, 1, 128, "uniform", 40, 640, 128))
    assert torch.equal(y, run_kernel(d, spec, 3, 40, 640))


def test_x_once_scope():
    """x_once needs the half2 path without a rotation (had_once is its rotated form) or x_norm."""
    ok = dict(bits=2, variant="gemv", block_m=1, block_n=64, block_k=128, x_once=True)
    KernelSpec(**ok)
    for bad in ({"had_block": 128}, {"bits": 8}, {"variant": "gemm", "block_m": 16}, {"x_norm": True},
                {"grid": "uniform_asym"}):
        with pytest.raises(KernelSpecError, match="x_once"):
            KernelSpec(**{**ok, **bad})


@pytest.mark.parametrize("bits,grid,act,m,split,k,had,once", [
    (2, "uniform", "fp16", 1, 3, 640, 0, False),  # the M=1 case of the tuner, 5 K steps over 3 splits
    (3, "uniform", "bf16", 2, 1, 512, 0, False),  # trio words, two rows
    (5, "uniform", "fp16", 1, 2, 384, 128, False),  # two planes, the per-step rotation
    (2, "uniform", "fp16", 1, 2, 512, 128, True),  # with had_once
    (8, "uniform_asym", "bf16", 3, 2, 384, 0, False),  # fp32 arithmetic, offsets, ragged rows
    (4, "lut", "fp16", 1, 1, 256, 0, False),
])
def test_gemv_cp_async_pipeline(bits, grid, act, m, split, k, had, once):
    """cp_async: no register prefetch in the text, the K loop a tl.range with num_stages (Triton's pipeliner copies
    its loads ahead into shared memory on a GPU); the result matches the reference and the register-prefetch kernel."""
    n = 40
    dt = torch.float16 if act == "fp16" else torch.bfloat16
    d = make_case(bits, grid, 1, 128, had, m, n, k, seed=bits * 17 + m + k)
    d["x"] = d["x"].to(dt)
    base = KernelSpec(bits=bits, grid=grid, group_size=128, act_dtype=act, had_block=had, variant="gemv",
                      block_m=1 << (m - 1).bit_length(), block_n=16, block_k=128, num_warps=2, num_stages=3,
                      had_once=once)
    spec = dataclasses.replace(base, cp_async=True)
    src = kernel_source(spec)
    assert "for step in tl.range(step_lo, step_hi, num_stages=3):" in src and "_p0" not in src
    assert "_p0" in kernel_source(base) and spec.name().endswith("_cpa_m" + base.name().split("_m")[-1])
    y = run_kernel(d, spec, split, n, k)
    check(y, reference(d, bits, 1, 128, grid, n, k, had), tol=2e-3 if act == "fp16" else 8e-3)
    assert torch.allclose(y.float(), run_kernel(d, base, split, n, k).float(), rtol=0, atol=1e-2)


def test_cp_async_scope():
    ok = dict(bits=4, variant="gemv", block_m=1, block_n=64, block_k=128, num_stages=3, cp_async=True)
    KernelSpec(**ok)
    for bad in ({"num_stages": 1}, {"x_ahead": True}, {"l2_ahead": 4}, {"variant": "gemm", "block_m": 16}):
        with pytest.raises(KernelSpecError, match="cp_async"):
            KernelSpec(**{**ok, **bad})


TMA_WORDS_CASES = [  # (bits, grid, p, act, m, split, n, k, group, block_n, num_stages, x_ahead)
    (4, "uniform", 1, "fp16", 1, 3, 40, 640, 128, 16, 3, False),  # the w4 form, 5 K steps over 3 splits, ragged N
    (2, "uniform", 1, "fp16", 1, 2, 100, 1024, 128, 64, 4, True),  # the w2 pick's form; a box past the padded rows
    (8, "uniform_asym", 1, "bf16", 3, 2, 40, 384, 128, 16, 2, False),  # fp32 arithmetic, offsets, ragged rows
    (1, "uniform", 1, "fp16", 2, 2, 40, 512, -1, 32, 3, True),  # one scale per row (after the loop), bf16-free
    (4, "uniform", 1, "fp16", 1, 2, 100, 1000, -1, 64, 3, False),  # a K tail (the step's last columns past K)
    (2, "lut", 2, "fp16", 1, 1, 40, 512, 128, 16, 2, False),  # pairs of a 2-bit table: 4-bit codes, block_k 256
]


def tma_words_case(bits, grid, p, act, m, n, k, g, bn, stages, ahead):
    """Inputs and the tma_words spec of a TMA_WORDS_CASES row, and its twin with the words in the register prefetch."""
    d = make_case(bits, grid, p, g, 0, m, n, k, seed=bits * 13 + m + k + n)
    d["x"] = d["x"].to(torch.float16 if act == "fp16" else torch.bfloat16)
    base = KernelSpec(bits=bits, grid=grid, p=p, group_size=g, act_dtype=act, variant="gemv",
                      block_m=1 << (m - 1).bit_length(), block_n=bn, block_k=128 * p, num_warps=2,
                      num_stages=stages, x_ahead=ahead)
    return d, dataclasses.replace(base, tma_words=True), base


@pytest.mark.parametrize("bits,grid,p,act,m,split,n,k,g,bn,stages,ahead", TMA_WORDS_CASES)
def test_gemv_tma_words(bits, grid, p, act, m, split, n, k, g, bn, stages, ahead):
    """tma_words: each K step's words are one descriptor load of the program's row groups (TMA on a GPU, a ring of
    num_stages stages filled by Triton's pipeliner) instead of register-prefetched pointer loads: every one-plane
    width, rows, splits, ragged N (boxes past the padded rows), a K tail, channel scales, a table of pairs; the
    result matches the reference, and the register-prefetch kernel's bit for bit (the same arithmetic)."""
    d, spec, base = tma_words_case(bits, grid, p, act, m, n, k, g, bn, stages, ahead)
    src = kernel_source(spec)
    assert f"for step in tl.range(step_lo, step_hi, num_stages={stages}):" in src and "w_ptr.load([" in src
    assert "w_grp" not in src and "word_" + str(bits * p) + "_p0" not in src
    assert spec.name().endswith("_tma_m" + base.name().split("_m")[-1])
    y = run_kernel(d, spec, split, n, k)
    check(y, reference(d, bits, p, g, grid, n, k, 0), tol=half2_tol(spec))  # (bf16: 8e-3)
    assert torch.equal(y, run_kernel(d, base, split, n, k))


def test_tma_words_scope():
    ok = dict(bits=4, variant="gemv", block_m=1, block_n=64, block_k=128, num_stages=3, tma_words=True)
    KernelSpec(**ok)
    for bad in ({"bits": 3}, {"bits": 5}, {"block_k": 256}, {"num_stages": 1}, {"block_n": 8}, {"cp_async": True},
                {"l2_ahead": 4}, {"variant": "gemm", "block_m": 16}):
        with pytest.raises(KernelSpecError, match="tma_words"):
            KernelSpec(**{**ok, **bad})


def test_tma_words_descriptor_needs_the_packed_tensor():
    """The descriptor views pack_codes' output as row-group runs; a sliced or copied-strided tensor is refused."""
    from qcomp.codegen.ops import tma_words_descriptor

    spec = KernelSpec(bits=4, variant="gemv", block_m=1, block_n=32, block_k=128, num_stages=3, tma_words=True)
    packed = pack_codes(torch.randint(0, 16, (48, 256), dtype=torch.uint8), 4)
    desc = tma_words_descriptor(spec, packed)
    assert list(desc.shape) == [3, 32, 16] and list(desc.block_shape) == [2, 16, 16]
    for bad in (packed[:, :16], packed.t().contiguous().t(), torch.empty(48 * 32 + 1, dtype=torch.int32)[1:].view(48, 32)):
        with pytest.raises(ValueError, match="tma_words reads the packed words through TMA"):
            tma_words_descriptor(spec, bad)


def test_had_scratch_needs_a_fused_rotation():
    with pytest.raises(KernelSpecError, match="had_scratch"):
        KernelSpec(had_scratch=True, block_k=128)
    with pytest.raises(KernelSpecError, match="had_scratch"):
        KernelSpec(variant="gemm", had_scratch=True, block_m=16, block_k=128)


@pytest.mark.parametrize("bits,grid,p,act,had,scratch,m,split,k", [
    (3, "uniform", 1, "bf16", 128, False, 1, 2, 512),  # the decode case: half2 path, fused rotation
    (4, "uniform", 1, "bf16", 128, True, 2, 1, 384),
    (2, "uniform", 1, "fp16", 0, False, 3, 3, 640),  # fp16 pairs scaled in half2, ragged rows
    (5, "uniform", 1, "fp16", 128, False, 4, 4, 512),
    (8, "uniform", 1, "bf16", 0, False, 1, 1, 256),  # fp32 arithmetic (no half2)
    (4, "lut", 1, "fp16", 0, False, 2, 2, 384),
    (2, "lut", 2, "bf16", 128, False, 1, 1, 256),
    (6, "uniform_asym", 1, "bf16", 128, False, 2, 2, 384),
])
def test_gemv_glu_reads_silu_gate_times_up(bits, grid, p, act, had, scratch, m, split, k, x_ahead=False, once=False):
    """x_glu: x rows are [gate | up] (2k wide) and the kernel applies silu(gate) * up while loading x, rounded like
    torch's two ops in x's dtype; it matches the reference on silu(gate) * up computed by torch, for every path that
    loads x (fused rotation, scratch row, half2 pairs, fp32, lut, split-K, ragged N and M)."""
    n = 40
    dt = torch.float16 if act == "fp16" else torch.bfloat16
    d = make_case(bits, grid, p, 128, had, m, n, k, seed=bits * 11 + m + k)
    gen = torch.Generator().manual_seed(k + m)
    d["x"] = (torch.randn(m, 2 * k, generator=gen) * 2).to(dt)  # fresh [gate | up] rows, gates on both sides of 0
    spec = KernelSpec(bits=bits, grid=grid, p=p, group_size=128, act_dtype=act, had_block=had, variant="gemv",
                      block_m=1 << (m - 1).bit_length(), block_n=16, block_k=128 * p, x_glu=True,
                      had_scratch=scratch, x_ahead=x_ahead, had_once=once)
    src = kernel_source(spec)
    assert "def _glu(" in src and "stride_xm + K + " in src and spec.name().endswith(spec.name().split("_glu")[1])
    out = torch.full((m, n), float("nan"), dtype=dt)
    y = launch(spec, split, d["x"], d["packed"], d["scales"], d["lut"].float().contiguous(), d["offsets"], d["bias"],
               d["signs"], n, k, out=out)
    h = torch.nn.functional.silu(d["x"][:, :k]) * d["x"][:, k:]
    ref = reference_qlinear(h, d["packed"], d["scales"], d["lut"], d["offsets"], d["bias"], d["signs"], bits, p, 128,
                            grid, n, k, had)
    check(y, ref, tol=2e-3 if act == "fp16" else 8e-3)
    plain = dataclasses.replace(spec, x_glu=False)
    assert torch.allclose(y.float(), run_kernel({**d, "x": h}, plain, split, n, k).float(), rtol=0, atol=1e-2)


@pytest.mark.parametrize("bits,act,had,m,split,k", [(2, "fp16", 0, 1, 3, 640), (4, "bf16", 128, 2, 1, 384)])
def test_gemv_glu_x_ahead(bits, act, had, m, split, k):
    """x_ahead with x_glu: silu(gate) * up of the steps ahead, plain and rotated."""
    test_gemv_glu_reads_silu_gate_times_up(bits, "uniform", 1, act, had, False, m, split, k, x_ahead=True)


@pytest.mark.parametrize("bits,act,m,split,k", [(2, "fp16", 1, 3, 640), (3, "bf16", 2, 2, 512)])
def test_gemv_glu_had_once(bits, act, m, split, k):
    """had_once with x_glu: the prologue rotates silu(gate) * up of the program's K range (the tuner offers had_once
    to the down projection's fused GEMV too)."""
    test_gemv_glu_reads_silu_gate_times_up(bits, "uniform", 1, act, 128, False, m, split, k, once=True)


def test_glu_op_and_its_fallbacks(monkeypatch):
    """qlinear with glu (the qlinear_fused op): the forced kernel (M <= 4, fused) and the paths where torch computes silu(gate) * up
    first (M > 4; a rotation above the fused limit) match the CPU reference; a wrong width names the fix."""
    n, k = 32, 512
    for m, had in ((2, 128), (6, 128), (3, 512)):
        d = make_case(4, "uniform", 1, 128, had, m, n, k, seed=m * 5 + had)
        x = torch.randn(m, 2 * k, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
        kw = dict(bits=4, p=1, group_size=128, grid="uniform", n=n, k=k, had_block=had, had_signs=d["signs"], glu=True)
        monkeypatch.delenv("QCOMP_FORCE_TRITON", raising=False)
        ref = qlinear(x, d["packed"], d["scales"], None, None, d["bias"].bfloat16(), **kw)
        monkeypatch.setenv("QCOMP_FORCE_TRITON", "1")
        y = qlinear(x, d["packed"], d["scales"], None, None, d["bias"].bfloat16(), **kw)
        check(y, ref, tol=8e-3)
    with pytest.raises(ValueError, match=r"\[gate \| up\], 2 \* k"):
        qlinear(x[:, :k], d["packed"], d["scales"], None, None, None, **kw)
    with pytest.raises(KernelSpecError, match="x_glu needs the gemv"):
        KernelSpec(variant="gemm", x_glu=True, block_m=16, block_k=128)


@pytest.mark.parametrize("bits,grid,p,act,had,split,m,k,scratch", [
    (3, "uniform", 1, "bf16", 128, 1, 1, 512, False),  # the decode case: half2 path, fused rotation
    (4, "uniform", 1, "bf16", 128, 2, 1, 384, False),  # split-K, a ragged last K step
    (3, "uniform", 1, "bf16", 128, 3, 2, 512, True),  # rotated x through scratch rows, after the splits' sums
    (2, "uniform", 1, "fp16", 0, 1, 3, 256, False),  # fp16 pairs unrotated, rows past M masked
    (8, "uniform_asym", 1, "bf16", 0, 3, 2, 384, False),  # fp32 path, offsets
    (4, "lut", 2, "fp16", 128, 1, 4, 512, False),  # table grid, two weights per code
])
def test_gemv_norm_and_residual(bits, grid, p, act, had, split, m, k, scratch):
    """KernelSpec.x_norm reads weight * x and scales y by the row's 1 / rms after the loop (the sum of squares taken
    from the x each step loads, summed over the splits), the bias after that; HAS_RES adds the residual to the
    rounded output: both against the unfused reference (norm, qlinear, add) on fresh inputs with large, uneven rows,
    and against the plain kernel on torch's normalized x."""
    from qcomp.capture.norms import rms_norm_reference

    n = 40
    dt = torch.float16 if act == "fp16" else torch.bfloat16
    d = make_case(bits, grid, p, 128, had, m, n, k, seed=bits * 7 + m + k)
    gen = torch.Generator().manual_seed(k * 3 + m)
    d["x"] = (torch.randn(m, k, generator=gen) * torch.linspace(1, 300, m)[:, None]).to(dt)
    nw = (torch.rand(k, generator=gen) * 3 - 1).to(dt)  # signs mixed, |w| up to 2
    res = torch.randn(m, n, generator=gen).to(dt)
    spec = KernelSpec(bits=bits, grid=grid, p=p, group_size=128, act_dtype=act, had_block=had, variant="gemv",
                      block_m=1 << (m - 1).bit_length(), block_n=16, block_k=128 * p, x_norm=True,
                      had_scratch=scratch)
    src = kernel_source(spec)
    assert "def _wx(" in src and "ssq0 += xr" in src and spec.name().endswith("_rms" + spec.name().split("_rms")[1])
    out = torch.full((m, n), float("nan"), dtype=dt)
    lut = d["lut"].float().contiguous()
    y = launch(spec, split, d["x"], d["packed"], d["scales"], lut, d["offsets"], d["bias"], d["signs"], n, k, out=out,
               norm=(nw, 1e-5), residual=res)
    h = rms_norm_reference(d["x"], nw, 1e-5)
    ref = res + reference_qlinear(h, d["packed"], d["scales"], d["lut"], d["offsets"], d["bias"], d["signs"], bits,
                                  p, 128, grid, n, k, had)
    # bf16: the interpreter truncates both bf16 roundings of y (the layer's output, then the sum), torch rounds to even
    check(y, ref, tol=2e-3 if act == "fp16" else 1.2e-2)
    plain = launch(dataclasses.replace(spec, x_norm=False, had_scratch=False), split, h, d["packed"], d["scales"], lut, d["offsets"],
                   d["bias"], d["signs"], n, k, residual=res)
    check(y, plain, tol=2e-3 if act == "fp16" else 1.2e-2)  # (roundings of x at another scale: not bit-equal)
    with pytest.raises(ValueError, match="pass norm"):
        launch(spec, split, d["x"], d["packed"], d["scales"], lut, d["offsets"], d["bias"], d["signs"], n, k)


K_TAIL_CASES = [  # (variant, grid, p, group, K, split); benchmarks/check_k_tails_gpu.py runs them on a GPU
    ("gemv", "uniform", 1, 32, 160, 1),  # groups of 32 inside a 128-column step; the last step holds one
    ("gemv", "uniform_asym", 1, 32, 96, 2),  # K below one step: offsets too
    ("gemv", "lut", 2, 128, 384, 1),  # p = 2: 256-column steps, the last step holds one group of two
    ("gemm", "uniform", 1, 32, 160, 2),
    ("gemm", "uniform_asym", 1, 32, 96, 1),
    ("gemm", "lut", 2, 128, 384, 1),
]


def k_tail_case(variant, grid, p, g, k):
    """The inputs (make_case), spec and N of one K_TAIL_CASES row."""
    m, n = (1, 40) if variant == "gemv" else (20, 40)
    d = make_case(3, grid, p, g, 0, m, n, k, seed=k + g + p)
    spec = KernelSpec(bits=3, grid=grid, p=p, group_size=g, variant=variant, block_m=m if m == 1 else 32,
                      block_n=16 if m == 1 else 32, block_k=128 * p)
    assert k % spec.block_k
    return d, spec, n


@pytest.mark.parametrize("variant,grid,p,g,k,split", K_TAIL_CASES)
def test_k_tails_read_no_scale_past_the_tensor(variant, grid, p, g, k, split):
    """A K step that runs past K holds columns whose groups do not exist: the kernel must not read their scales
    (for the last row they lie after the tensor; CI once met NaN there, tiny_decode's K = 128 with 256-column
    steps). The inputs sit inside NaN poison, so such a read shows; the result matches the reference."""
    d, spec, n = k_tail_case(variant, grid, p, g, k)
    check(run_kernel(d, spec, split, n, k), reference(d, 3, p, g, grid, n, k, 0))


def test_gemm_adds_the_residual():
    """The tensor-core variant (fp16: the interpreter's bf16 tl.dot is wrong) adds HAS_RES's residual in its
    epilogue, with and without split-K."""
    n, k, m = 64, 256, 20
    d = make_case(4, "uniform", 1, 128, 0, m, n, k, seed=5)
    res = torch.randn(m, n, generator=torch.Generator().manual_seed(6)).half()
    ref = res + reference(d, 4, 1, 128, "uniform", n, k, 0)
    for split in (1, 2):
        spec = KernelSpec(bits=4, group_size=128, variant="gemm", block_m=32, block_n=32, block_k=128)
        out = torch.full((m, n), float("nan"), dtype=torch.float16)
        y = launch(spec, split, d["x"], d["packed"], d["scales"], d["lut"].float().contiguous(), None, d["bias"],
                   None, n, k, out=out, residual=res)
        check(y, ref)


def test_fused_op_and_its_fallbacks(monkeypatch):
    """torch.ops.qcomp.qlinear_fused: the forced kernel (M <= 4: the gemv normalizes) and the path where torch
    applies the norm first (M > 4) match the CPU reference (the unfused function); bad fusions name the fix."""
    n, k = 32, 512
    for m in (1, 6):
        d = make_case(3, "uniform", 1, 128, 128, m, n, k, seed=m)
        gen = torch.Generator().manual_seed(m + 1)
        x = (torch.randn(m, k, generator=gen) * 5).to(torch.bfloat16)
        kw = dict(bits=3, p=1, group_size=128, grid="uniform", n=n, k=k, had_block=128, had_signs=d["signs"],
                  norm_weight=torch.rand(k, generator=gen).to(torch.bfloat16) + 0.5, norm_eps=1e-6,
                  residual=torch.randn(m, n, generator=gen).to(torch.bfloat16))
        monkeypatch.delenv("QCOMP_FORCE_TRITON", raising=False)
        ref = qlinear(x, d["packed"], d["scales"], None, None, None, **kw)
        monkeypatch.setenv("QCOMP_FORCE_TRITON", "1")
        y = qlinear(x, d["packed"], d["scales"], None, None, None, **kw)
        check(y, ref, tol=8e-3)
    with pytest.raises(ValueError, match="either silu"):
        qlinear(torch.cat([x, x], -1), d["packed"], d["scales"], None, None, None, **{**kw, "glu": True})
    with pytest.raises(ValueError, match=r"norm_weight is .* \[512\]"):
        qlinear(x, d["packed"], d["scales"], None, None, None, **{**kw, "norm_weight": kw["norm_weight"][:8]})
    with pytest.raises(ValueError, match="norm_eps must be a float"):
        qlinear(x, d["packed"], d["scales"], None, None, None, **{**kw, "norm_eps": None})
    with pytest.raises(ValueError, match="residual is"):
        qlinear(x, d["packed"], d["scales"], None, None, None, **{**kw, "residual": kw["residual"].float()})
    with pytest.raises(KernelSpecError, match="x_norm needs the gemv"):
        KernelSpec(variant="gemm", x_norm=True, block_m=16, block_k=128)


ROW_ACC_CASES = [  # (bits, grid, p, act, m, split, n, k, group, had, block_n, extra spec fields)
    (4, "uniform", 1, "fp16", 1, 3, 100, 640, 128, 0, 64, {}),  # the w4 pick's form, ragged N, 5 K steps / 3 splits
    (8, "uniform_asym", 1, "bf16", 3, 2, 40, 384, 128, 0, 32, {}),  # fp32 arithmetic, offsets in the step's sum
    (3, "uniform", 1, "fp16", 2, 2, 40, 1000, -1, 0, 16, {}),  # channel scales after the loop, a K tail, trio words
    (2, "uniform", 1, "fp16", 1, 2, 100, 1024, 128, 0, 32, {"x_once": True, "x_ahead": True}),  # 1 / xs per step
    (5, "uniform", 1, "fp16", 1, 1, 48, 512, 32, 0, 16, {}),  # group 32: scales per column slot (slots mode)
    (4, "uniform", 1, "fp16", 1, 2, 48, 384, 128, 128, 16, {}),  # the per-step rotation
    (4, "lut", 1, "fp16", 2, 1, 48, 256, 128, 0, 16, {}),  # 4-bit table
    (8, "uniform", 1, "fp16", 1, 2, 40, 512, 128, 0, 32, {"tma_words": True, "num_stages": 4}),  # words by TMA
]


def row_acc_case(bits, grid, p, act, m, n, k, g, had, bn, extra):
    """Inputs and the row_acc spec of a ROW_ACC_CASES row, its twin with [block_n, C] accumulators, the tolerance."""
    d = make_case(bits, grid, p, g, had, m, n, k, seed=bits * 5 + m + k + n)
    d["x"] = d["x"].to(torch.float16 if act == "fp16" else torch.bfloat16)
    base = KernelSpec(**{**dict(bits=bits, grid=grid, p=p, group_size=g, act_dtype=act, had_block=had, variant="gemv",
                                block_m=1 << (m - 1).bit_length(), block_n=bn, block_k=128 * p, num_warps=2,
                                num_stages=2), **extra})
    return d, dataclasses.replace(base, row_acc=True), base, half2_tol(base)


@pytest.mark.parametrize("bits,grid,p,act,m,split,n,k,g,had,bn,extra", ROW_ACC_CASES)
def test_gemv_row_acc(bits, grid, p, act, m, split, n, k, g, had, bn, extra):
    """row_acc: one fp32 accumulator per row, each K step's partial sums added across their columns first: every
    scale mode (row, channel, column slots), offsets, x_once's step scales, a rotation, a table, words by TMA, rows,
    splits, ragged N, a K tail. Matches the reference and the [block_n, C] accumulators' kernel (to rounding: the
    columns are summed in another order)."""
    d, spec, base, tol = row_acc_case(bits, grid, p, act, m, n, k, g, had, bn, extra)
    src = kernel_source(spec)
    assert "acc0 = tl.zeros((BLOCK_N,), dtype=tl.float32)" in src and "acc0 += tl.sum(" in src
    assert spec.name().endswith("_racc_m" + base.name().split("_m")[-1])
    y = run_kernel(d, spec, split, n, k)
    check(y, reference(d, bits, p, g, grid, n, k, had), tol=tol)
    y0 = run_kernel(d, base, split, n, k)
    assert float((y.float() - y0.float()).norm() / y0.float().norm()) < 1e-3


def test_row_acc_scope():
    KernelSpec(bits=4, variant="gemv", block_m=1, block_n=64, block_k=128, row_acc=True)
    with pytest.raises(KernelSpecError, match="row_acc"):
        KernelSpec(bits=4, variant="gemm", block_m=16, block_n=64, block_k=128, row_acc=True)
