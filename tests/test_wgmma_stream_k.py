"""Stream-K for the wgmma TMA loop (codegen/wgmma_stream_k.py, KernelSpec.stream_k): the unit arithmetic the kernel
text runs (segments, parts and their workspace slots) as properties, the spec's scope, its text and its static sm_90
compile. Its numbers are checked on the H100 (benchmarks/check_wgmma.py: N and M tails, 1-3 programs per SM, bias)."""
import ast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcomp.codegen import gemm_wgmma, wgmma_stream_k
from qcomp.codegen.kernel_spec import KernelSpec, KernelSpecError
from qcomp.codegen.render import kernel_source

from test_kernel_sass import sass_report

SK = dict(bits=4, variant="wgmma", block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=2, a_scales=True,
          stream_k=True)


@settings(max_examples=300, deadline=None)
@given(tiles=st.integers(1, 40), n_steps=st.integers(1, 70), per=st.floats(0.01, 1.0))
def test_segments_cover_every_unit_once_and_parts_name_each_split_tile_exactly(tiles, n_steps, per):
    """Every (tile, K step) unit is run by exactly one program; a tile is whole in one program or split into parts,
    and parts() (what the last part sums, from arithmetic alone) lists exactly the programs that ran a part of it,
    each with the slot that program wrote; no program writes a slot twice and slots stay in its two."""
    total = tiles * n_steps
    progs = max(1, min(total, round(per * total)))
    seen = [[0] * n_steps for _ in range(tiles)]
    written = {}
    for pid in range(progs):
        segs = wgmma_stream_k.segments(pid, progs, total, n_steps)
        assert segs, "with progs <= units every program has a unit"
        for tile, lo, hi, slot in segs:
            for step in range(lo, hi):
                seen[tile][step] += 1
            if slot is not None:
                assert slot in (2 * pid, 2 * pid + 1) and slot not in written
                written[slot] = (tile, pid)
    assert all(c == 1 for row in seen for c in row)
    for tile in range(tiles):
        got = sorted((pid, slot) for slot, (t, pid) in written.items() if t == tile)
        if got:
            assert wgmma_stream_k.parts(tile, progs, total, n_steps) == got


def test_programs_fill_the_gpu_but_never_outnumber_the_units():
    assert wgmma_stream_k.programs(2, 132, 256, 28672, 8192, 128, 128) == 264
    assert wgmma_stream_k.programs(2, 132, 37, 1000, 256, 128, 128) == 16  # 8 tiles x 2 K steps
    with pytest.raises(ValueError, match="programs per SM"):
        wgmma_stream_k.programs(0, 132, 256, 1024, 1024, 128, 128)


@pytest.mark.parametrize("fields, why", [
    (dict(a_scales=False, a_regs=True), "stream_k on its TMA loop only"),
    (dict(num_stages=3, a_scales=False, a_smem=True), "stream_k on its TMA loop only"),
])
def test_stream_k_scope(fields, why):
    with pytest.raises(KernelSpecError, match=why):
        KernelSpec(**{**SK, **fields})
    with pytest.raises(KernelSpecError, match="stream_k .* needs the wgmma variant"):
        KernelSpec(bits=4, variant="gemm", block_m=64, block_n=64, stream_k=True)


@pytest.mark.parametrize("a_scales", [True, False])
def test_source_runs_segments_with_the_ring_made_once(a_scales):
    """One ring for all segments (allocated and initialised before the segment loop, invalidated after it), stages
    and phases counted on from g, the bias in the part with the tile's first step, whole tiles stored to y and parts
    through the workspace with a counter per tile."""
    spec = KernelSpec(**{**SK, "a_scales": a_scales})
    assert spec.name().endswith(("_sa" if a_scales else "_fp16") + "_sk_m128n128k128w8s2")
    src = kernel_source(spec)
    ast.parse(src)
    lines = src.splitlines()
    seg = lines.index("    while u < u1:  # one segment: K steps lo..hi of one tile")
    alloc = [i for i, ln in enumerate(lines) if "gl.allocate_shared_memory" in ln]
    assert alloc and max(alloc) < seg
    assert [i for i, ln in enumerate(lines) if "mbarrier.invalidate" in ln][0] > seg
    assert "fill_stage(x_desc, w_desc, xs, wsm, bars, (g + p) % STAGES, off_m, lo + p, grp0)" in src
    assert "        it = g + step - lo" in src and "        g += hi - lo" in src
    assert "if lo == 0:  # the part with the tile's first K step adds the bias" in src
    assert src.count("gl.atomic_add(cnt_ptr + tile, 1") == 1 and "SPLIT_K" not in src.split("HAS_BIAS: gl.constexpr,\n):", 1)[1]


def test_static_sm90_stream_k_keeps_two_programs_per_sm():
    """With launch's register cap for 2 programs per SM (gemm_wgmma.compile_options): <= 128 registers, no spills,
    one wgmma wait per K step."""
    assert gemm_wgmma.compile_options(KernelSpec(**SK), 2) == {"maxnreg": 128}
    assert gemm_wgmma.compile_options(KernelSpec(**{**SK, "stream_k": False}), 2) == {}
    r = sass_report(SK, "--per-sm", "2")
    assert r["registers"] <= 128 and r["local_memory"] == 0 and len(r["wgmma_waits"]) == 1, r


class _PtxasRefuses:
    """A compiled kernel stand-in whose launch fails as ptxas did on the H100 for a_scales m256 n128 at 2 programs
    per SM (session 35: C7602, the register cap below what the tile needs)."""

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            raise RuntimeError("PTXAS error: ptxas fatal   : (C7602) Insufficient registers (128) to compile "
                               f"instruction (maxnreg {kwargs.get('maxnreg')})")
        return run


@pytest.mark.parametrize("stream_k", [True, False])
def test_a_register_cap_too_low_for_the_tile_names_the_fix(stream_k):
    import torch

    spec = KernelSpec(**{**SK, "block_m": 256, "stream_k": stream_k})
    n, k, m = 256, 256, 256
    x2 = torch.randn(m, k).half()
    packed = torch.randint(-2 ** 31, 2 ** 31 - 1, (n, k * spec.bits // 32), dtype=torch.int32)
    scales = torch.rand(n, k // 128).half()
    y = torch.empty(m, n).half()
    args = (spec, _PtxasRefuses(), (2 if stream_k else 1, 1), x2, packed, scales, None, y, None, None, n, k)
    if stream_k:  # the cap named with the way out
        with pytest.raises(ValueError, match=r"2 stream-K programs per SM: their register cap \(128 a thread\).*"
                                             r"use fewer programs per SM"):
            gemm_wgmma.launch(*args, per_sm=2)
    else:  # no cap of ours: ptxas' own error goes up unchanged
        with pytest.raises(RuntimeError, match="C7602"):
            gemm_wgmma.launch(*args, per_sm=2)
