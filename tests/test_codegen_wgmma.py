"""The Gluon wgmma tile (codegen/gemm_wgmma.py, KernelSpec variant "wgmma"): what it accepts, its text, its static
sm_90 compile (no GPU needed) and its place in the tuner. The CPU interpreter does not run Gluon: its numbers are
checked on the H100 by benchmarks/check_wgmma.py (tails, split-K, bias against the float32 reference); its slot PTX is
gemm_regs.slot_ptx, run on the CPU by tests/test_gemm_regs_ptx.py."""
import ast
import dataclasses
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcomp.codegen import gemm_wgmma, tune
from qcomp.codegen.kernel_spec import KernelSpec, KernelSpecError
from qcomp.codegen.render import kernel_source

from test_kernel_sass import sass_report

W4 = dict(bits=4, variant="wgmma", block_m=64, block_n=64, block_k=128, num_warps=4, num_stages=3)


@pytest.mark.parametrize("fields, why", [
    (dict(bits=3), "4- or 8-bit codes"),
    (dict(bits=2), "4- or 8-bit codes"),
    (dict(grid="lut"), "grid 'uniform'"),
    (dict(act_dtype="bf16"), "fp16 activations"),
    (dict(group_size=64), "multiple of 128"),
    (dict(had_block=128), "no fused Hadamard"),
    (dict(num_warps=2, block_n=32), "num_warps 4, 8 or 16"),
    (dict(block_n=32), "block_n = 16 * num_warps or 32 * num_warps = 64 or 128"),
    (dict(block_n=256), "block_n = 16 * num_warps or 32 * num_warps = 64 or 128"),
    (dict(block_m=512), "block_m in 8..256"),
    (dict(block_k=256), "block_k 128"),
    (dict(num_stages=1), "num_stages >= 2"),
    (dict(a_scales=True, a_regs=True), "takes a_scales only on its TMA loop"),
    (dict(block_m=256), "needs a_regs, a_smem or a_scales at block_m > 128"),
    (dict(bits=8, block_m=256, block_n=128, num_warps=8, a_scales=True), "245760 bytes of shared memory for 3 stages"),
    (dict(block_m=256, block_n=128, num_warps=8, num_stages=4, a_regs=True), "262144 bytes of shared memory"),
])
def test_spec_refuses_what_the_tile_cannot_run(fields, why):
    with pytest.raises(KernelSpecError, match="variant 'wgmma'") as e:
        KernelSpec(**{**W4, **fields})
    assert why in str(e.value)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("version", [(3, 6), (3, 9)])
def test_source_issues_every_slot_then_waits_once_per_step(bits, version, monkeypatch):
    """One async warpgroup_mma per slot (32 / bits), then ONE wait per K step that holds every slot's A operand as a
    dep; the names of Gluon's TMA copy and CTA barrier follow the installed triton."""
    from qcomp.codegen import render

    monkeypatch.setattr(render, "_triton_version", lambda: version)
    spec = KernelSpec(**{**W4, "bits": bits, "num_warps": 8, "block_n": 128})
    src = kernel_source(spec)
    ast.parse(src)
    slots = 32 // bits
    assert src.count("warpgroup_mma(") == slots and src.count("is_async=True") == slots
    lines = src.splitlines()
    waits = [i for i, ln in enumerate(lines) if "warpgroup_mma_wait(" in ln]
    assert len(waits) == 1, waits
    assert "deps=(acc_s, " + ", ".join(f"a{j}" for j in range(slots)) + ")" in lines[waits[0]]
    # each K step sums into acc_s from scratch and is scaled into acc after its wait
    assert src.count("use_acc=False") == 1 and src.count("use_acc=True") == slots - 1
    scaled = [i for i, ln in enumerate(lines) if "acc += acc_s * " in ln]
    assert len(scaled) == 1 and scaled[0] > waits[0]
    # the words come through TMA (fill_stage); the next step's scales are the loop's only global loads, held as
    # 32 bits (LD_U16) and converted after the step's wait (CVT_LO reads both halves: ptxas cannot pack another
    # 16-bit value into the register, which would make the step wait for the load)
    assert "w_desc, [grp0, step * 16, 0]" in src and "wsm.index(st).reshape(" in src
    loop = lines[lines.index("    for step in range(lo, hi):"): waits[0] + 3]
    assert not any("gl.load(" in ln for ln in loop)
    assert sum("LD_U16" in ln for ln in loop) == 1 and "s_ptrs" in next(ln for ln in loop if "LD_U16" in ln)
    assert any("CVT_LO" in ln for ln in lines[waits[0]: waits[0] + 3])
    assert (gemm_wgmma.tma_load_name(version) + "(") in src
    assert "tma.async_load(" in src if version > (3, 6) else "tma.async_copy_global_to_shared(" in src
    assert (gemm_wgmma.barrier_name(version) + "()") in src  # split-K release and, at 8 warps, the stage refill
    for j in range(slots):  # the registers tile's PTX blocks, verbatim
        assert f'SLOT_{j} = gl.constexpr("{gemm_wgmma.slot_ptx(bits, j, True)[0]}")' in src


@pytest.mark.parametrize("bits", [4, 8])
def test_source_registers_loop_scales_a_and_waits_once(bits):
    """a_regs: the words are loaded into registers one step ahead, each slot's A is multiplied by the group scale
    and one accumulator chains every slot; one wait per step holds the A operands."""
    spec = KernelSpec(**{**W4, "bits": bits, "block_m": 256, "block_n": 128, "num_warps": 8, "a_regs": True})
    src = kernel_source(spec)
    ast.parse(src)
    slots = 32 // bits
    waits = [ln for ln in src.splitlines() if "warpgroup_mma_wait(" in ln]
    assert len(waits) == 1 and "deps=(acc, " + ", ".join(f"a{j}" for j in range(slots)) + ")" in waits[0]
    assert src.count("pack=2) * sc") == slots and "acc_s" not in src and "w_desc" not in src
    assert "words_n = gl.load(w_ptrs" in src


@pytest.mark.parametrize("bits", [4, 8])
def test_source_tma_loop_with_scales_in_a_chains_one_accumulator(bits):
    """a_scales on the TMA loop: the words still come through TMA and the next step's scale is still the loop's only
    global load (LD_U16), converted after the step's wait; each slot's A is multiplied by the scale and every wgmma
    chains on acc (no acc_s: one accumulator, which lets 256 activation rows take this loop)."""
    spec = KernelSpec(**{**W4, "bits": bits, "block_m": 256, "block_n": 128, "num_warps": 8, "num_stages": 2,
                         "a_scales": True})
    assert spec.name().endswith("_fp16_sa_m256n128k128w8s2")
    src = kernel_source(spec)
    ast.parse(src)
    slots = 32 // bits
    lines = src.splitlines()
    waits = [i for i, ln in enumerate(lines) if "warpgroup_mma_wait(" in ln]
    assert len(waits) == 1 and "deps=(acc, " + ", ".join(f"a{j}" for j in range(slots)) + ")" in lines[waits[0]]
    assert src.count("pack=2) * sc") == slots and "acc_s" not in src and "use_acc" not in src
    assert "w_desc, [grp0, step * 16, 0]" in src
    loop = lines[lines.index("    for step in range(lo, hi):"): waits[0] + 2]
    assert not any("gl.load(" in ln for ln in loop) and sum("LD_U16" in ln for ln in loop) == 1
    assert "CVT_LO" in lines[waits[0] + 1] and lines[waits[0] + 1].endswith(".to(gl.float16)")


@pytest.mark.parametrize("bits, block_n, hgmma", [(4, 128, 8), (8, 128, 8)])
def test_static_sm90_loop_has_one_wgmma_wait_per_k_step(bits, block_n, hgmma):
    """Compiled for sm_90 (Triton's bundled ptxas): the K loop issues its HGMMAs (8 x K16 per 128 codes and m64 row
    block of a warp group) back to back and waits once (WARPGROUP.DEPBAR), with no local-memory spills; the registers
    tile waits after every slot."""
    r = sass_report({**W4, "bits": bits, "block_m": 128, "block_n": block_n, "num_warps": 8, "a_regs": True})
    assert r["kernel"] == f"qlinear_wgmma_w{bits}_uniform_g128_fp16_ra_m128n{block_n}k128w8s3"
    assert sum(v for op, v in r["opcodes"].items() if op.startswith("HGMMA")) == hgmma, r["opcodes"]
    assert len(r["wgmma_waits"]) == 1, r["wgmma_waits"]
    assert r["local_memory"] == 0
    assert r["global_loads"] >= 2  # the next step's words and scale, in the loop (tiles of > 64 rows)


@pytest.mark.parametrize("bits", [4, 8])
def test_static_sm90_tma_words_loop_waits_for_no_load_of_its_own_step_early(bits):
    """Tiles of <= 64 rows: the words come through TMA (no word loads in the loop), and the scale loads' first waiter
    comes late in the step, after the first wgmma is issued (session 30: with the words in registers every step
    waited for its own prefetch at its head)."""
    spec = {**W4, "bits": bits, "num_stages": 2}
    r = sass_report(spec, "--waits")
    assert r["local_memory"] == 0 and len(r["wgmma_waits"]) == 1
    assert r["global_loads"] == 2  # the two scales a thread's rows need (no words)
    rows = r["scoreboards"]
    loads = {row[2] for row in rows if "LDG" in row[1]}
    waiters = [row for row in rows if set(row[3]) & loads and "LDG" not in row[1]]
    mbar = [row[0] for row in rows if "TRYWAIT" in row[1]]
    first_hgmma = r["first_hgmma"]
    assert waiters and mbar and all(w[0] > first_hgmma > mbar[0] for w in waiters), (rows, first_hgmma)


def test_static_sm90_tma_loop_with_scales_in_a_fits_two_programs_per_sm():
    """a_scales at m128 n128 s2 (the M=256 candidate): at most 128 registers a thread (two 256-thread programs per
    SM; the acc_s form needs 187), no spills, one wgmma wait per step, and the scale loads' first waiter after the
    step's first wgmma (the TMA loop's property, kept)."""
    r = sass_report({**W4, "block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 2, "a_scales": True},
                    "--waits")
    assert r["registers"] <= 128 and r["local_memory"] == 0 and len(r["wgmma_waits"]) == 1, r
    assert r["global_loads"] == 2
    rows = r["scoreboards"]
    loads = {row[2] for row in rows if "LDG" in row[1]}
    waiters = [row for row in rows if set(row[3]) & loads and "LDG" not in row[1]]
    assert waiters and all(w[0] > r["first_hgmma"] for w in waiters), (rows, r["first_hgmma"])


def test_static_sm90_split_k_sum_costs_no_registers_over_the_k_loop():
    """A split-K launch compiles the partial sums' epilogue in (SPLIT_K is not the constant 1): summed SUM_ROWS rows at
    a time it stays within the K loop's registers (the whole-tile sum took 168 at m64 n64, where 4 programs per SM
    need <= 128)."""
    r = sass_report({**W4, "num_stages": 2}, "--split-k", "2")
    assert r["registers"] <= 128 and r["local_memory"] == 0, r


SMEM = {**W4, "block_m": 128, "block_n": 128, "num_warps": 8, "a_smem": True}


@pytest.mark.parametrize("fields, why", [
    (dict(a_regs=True), "a_regs or a_smem, not both"),
    (dict(block_n=256), "block_n = 16 * num_warps = 128"),
    (dict(num_stages=2), "num_stages >= 3"),
    (dict(block_m=256), "bytes of shared memory > 232448"),
    (dict(num_stages=5), "bytes of shared memory > 232448"),
])
def test_a_smem_refuses_what_its_loop_cannot_run(fields, why):
    with pytest.raises(KernelSpecError, match="variant 'wgmma'") as e:
        KernelSpec(**{**SMEM, **fields})
    assert why in str(e.value)


def test_a_smem_needs_the_wgmma_variant():
    with pytest.raises(KernelSpecError, match=r"a_smem \(weights through shared memory\) needs the wgmma variant"):
        KernelSpec(bits=4, variant="gemm", block_m=64, block_n=64, a_smem=True)


@given(bits=st.sampled_from([4, 8]), bm=st.sampled_from([16, 64, 128, 256]), warps=st.sampled_from([4, 8]),
       stages=st.integers(3, 6))
@settings(max_examples=40, deadline=None)
def test_a_smem_shared_memory_bound_matches_its_buffers(bits, bm, warps, stages):
    """A spec is accepted exactly when its x and word stages and two A buffers fit the 227 KB of an sm_90 program."""
    bn = 16 * warps
    need = stages * (bm * 128 * 2 + bn * 4 * bits * 4) + 2 * bn * 128 * 2
    fields = {**SMEM, "bits": bits, "block_m": bm, "block_n": bn, "num_warps": warps, "num_stages": stages}
    if need <= gemm_wgmma.SMEM_BYTES:
        assert KernelSpec(**fields).name().endswith(f"_as_m{bm}n{bn}k128w{warps}s{stages}")
    else:
        with pytest.raises(KernelSpecError, match=f"needs {need} bytes"):
            KernelSpec(**fields)


@pytest.mark.parametrize("bits", [4, 8])
def test_words_layout_gives_each_warp_the_a_rows_of_its_warp_group(bits):
    """_loop_smem's words layout: 8 consecutive words per thread (one 16-byte store of a slot) and 16 rows per warp,
    so warp w stores A rows 16w..16w + 15, which its own warp group's wgmmas read (two A buffers suffice)."""
    text = gemm_wgmma._words_layout(KernelSpec(**{**SMEM, "bits": bits}))
    assert text.startswith("gl.BlockedLayout(") and "[NUM_WARPS, 1], [1, 0])" in text
    per_thread, per_warp, _, order = ast.literal_eval(text[len("gl.BlockedLayout"):].replace("NUM_WARPS", "8"))
    assert per_thread[1] == 8 and per_thread[1] * per_warp[1] == 4 * bits  # a row's W0 words
    assert per_thread[0] * per_warp[0] == 16 and per_warp[0] * per_warp[1] == 32 and order == [1, 0]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("version", [(3, 6), (3, 9)])
def test_a_smem_source_keeps_a_step_in_flight(bits, version, monkeypatch):
    """a_smem: the first step is peeled and starts the accumulator (use_acc=False, no zeros moved into it while
    wgmmas fly); each step stores its A once (both K halves), fences, syncs, refills the stage of step it - 2 and
    issues two SS wgmmas, then retires only the step before (num_outstanding=2); one wait 0 after the loop."""
    from qcomp.codegen import render

    monkeypatch.setattr(render, "_triton_version", lambda: version)
    src = kernel_source(KernelSpec(**{**SMEM, "bits": bits}))
    ast.parse(src)
    lines = src.splitlines()
    loop = lines.index("    for step in range(lo + 1, hi):")
    peeled, body = lines[:loop], lines[loop:]
    assert "for p in gl.static_range(STAGES - 2):  # the first steps" in src
    assert sum("use_acc=h > 0" in ln for ln in peeled) == 1 and "use_acc" not in "\n".join(body)
    for part in (peeled, body):
        text = "\n".join(part)
        assert text.count("asm.index(ab).store(") == 1 and text.count("pack=2) * sc") == 32 // bits
        order = [next(i for i, ln in enumerate(part) if key in ln) for key in (
            "asm.index(ab).store(", "fence_async_shared()", gemm_wgmma.barrier_name(version) + "()",
            "fill_stage(x_desc, w_desc, xs, wsm, bars, (it + STAGES - 2) % STAGES",
            "a_h = asm.index(ab).slice(h * BLOCK_N, BLOCK_N)", "acc = warpgroup_mma(a_h, xs.index(2 * st + h)",
            "warpgroup_mma_wait(num_outstanding=2, deps=(acc,))")]
        assert order == sorted(order), order
    after = [ln for ln in body if ln.startswith("    acc = warpgroup_mma_wait(")]
    assert after == ["    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))"]
    assert "LD_U16" not in src and "acc_s" not in src


@pytest.mark.parametrize("bits", [4, 8])
def test_static_sm90_a_smem_loop_keeps_wgmmas_in_flight(bits):
    """Compiled for sm_90: the K loop's 8 HGMMAs are not serialized (one WARPGROUP.DEPBAR per step, leaving the
    step's two groups in flight: ptxas C7515 serialized every one while zeros were moved into the accumulator
    before the loop), A goes out as 16-byte stores, and no barrier separates them (one A store per step)."""
    r = sass_report({**SMEM, "bits": bits, "num_stages": 3})
    assert sum(v for op, v in r["opcodes"].items() if op.startswith("HGMMA")) == 8, r["opcodes"]
    assert [w.strip() for w in r["wgmma_waits"]] == ["WARPGROUP.DEPBAR.LE gsb0, 0x2"], r["wgmma_waits"]
    assert r["opcodes"].get("STS.128") == 8 and r["local_memory"] == 0
    assert r["barriers"] <= 6, r


def test_launch_refuses_shapes_and_layouts_the_tile_cannot_read():
    spec = KernelSpec(**W4)
    x = torch.randn(8, 256, dtype=torch.float16)
    args = (None, (1, 1), x, None, torch.ones(64, 2, dtype=torch.float16), None, None, None, None, 64)
    with pytest.raises(ValueError, match="K a multiple of 128"):
        gemm_wgmma.launch(spec, *args, 200)
    with pytest.raises(ValueError, match="a K step in every split: split 3 > K / 128 = 2"):
        gemm_wgmma.launch(KernelSpec(**SMEM), None, (1, 3), x, None, torch.ones(64, 2, dtype=torch.float16), None,
                          None, None, None, 64, 256)
    with pytest.raises(ValueError, match="scales of x's dtype"):
        gemm_wgmma.launch(spec, None, (1, 1), x, None, torch.ones(64, 2), None, None, None, None, 64, 256)
    with pytest.raises(ValueError, match="unit column stride"):
        gemm_wgmma.x_descriptor(torch.randn(256, 8, dtype=torch.float16).t(), 64)
    with pytest.raises(ValueError, match="16-bit x"):
        gemm_wgmma.x_descriptor(torch.randn(8, 256), 64)


def test_tma_ready_names_the_views_launch_copies_first():
    """launch copies x where TMA cannot address it (a tuned pick holds for any x of the shape), so a misaligned view
    still runs; x_descriptor itself refuses it."""
    x = torch.randn(8, 257, dtype=torch.float16)
    assert gemm_wgmma.tma_ready(x[:, :256].contiguous())
    assert not gemm_wgmma.tma_ready(x[:, 1:])  # start 2 bytes in, rows 514 bytes apart
    assert not gemm_wgmma.tma_ready(x[:, :256])  # rows 514 bytes apart
    assert not gemm_wgmma.tma_ready(torch.randn(8, 256))  # 32-bit


def test_wgmma_setting(monkeypatch):
    monkeypatch.delenv("QCOMP_WGMMA", raising=False)
    assert not tune.wgmma_setting(torch.device("cpu"))  # the interpreter does not run Gluon
    assert not tune.wgmma_setting(None)
    monkeypatch.setenv("QCOMP_WGMMA", "yes")
    with pytest.raises(ValueError, match="QCOMP_WGMMA='yes'"):
        tune.wgmma_setting(torch.device("cpu"))


@settings(max_examples=60, deadline=None)
@given(m=st.integers(17, 600), n=st.integers(1, 40000), k_tiles=st.integers(1, 256), bits=st.integers(1, 8),
       group=st.sampled_from([-1, 32, 128, 256]))
def test_tuner_adds_wgmma_tiles_where_they_apply(m, n, k_tiles, bits, group):
    """With the wgmma tile on (an sm_90 GPU), M > 16 candidates gain WGMMA_TILES for 4/8-bit g128-style specs; every
    one is valid and its split leaves each program K steps; other widths and groups get none."""
    k = 128 * k_tiles
    base = KernelSpec(bits=bits, group_size=group, block_m=1)
    saved = tune.wgmma_setting
    tune.wgmma_setting = lambda device: True
    try:
        cands = tune.candidates(base, m, n, k, torch.device("cuda"))
    finally:
        tune.wgmma_setting = saved
    wg = [(s, sp) for s, sp in cands if s.variant == "wgmma"]
    takes = bits in (4, 8) and (group == -1 or group % 128 == 0)
    assert bool(wg) == takes
    tiles = tune.WGMMA_TILES[min(256, max(32, tune.m_bucket(m)))]
    for spec, split in wg:
        spec.validate()
        loop = next(name for name, f in tune.WGMMA_LOOPS.items()
                    if (spec.a_regs, spec.a_scales, spec.rolling_wait)
                    == (f.get("a_regs", False), f.get("a_scales", False), f.get("rolling_wait", False)))
        per_sm = split if spec.stream_k else 0
        assert (spec.block_m, spec.block_n, spec.num_warps, spec.num_stages, loop, per_sm) in tiles
        assert spec.stream_k or split == 1 or 2 * split <= k // 128
    assert all(s.variant == "gemm" for s, _ in cands if s.variant != "wgmma")


def test_tuner_keys_wgmma_choices_apart(monkeypatch):
    """Choices tuned before the wgmma tile existed are not reused where it is tried: the key says so."""
    base = KernelSpec(bits=4, group_size=128, block_m=1)
    off = tune._key(base, 64, 4096, 4096, torch.device("cpu"))
    monkeypatch.setattr(tune, "wgmma_setting", lambda device: True)
    assert tune._key(base, 64, 4096, 4096, torch.device("cpu")) == off + "|wgmma36"


def test_check_cases_are_valid_wgmma_specs():
    """The H100 check and sweep files name valid specs, and the check file covers every tuner tile at 4 and 8 bits."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "cases"
    check = [KernelSpec(**c[0]) for c in json.loads((root / "wgmma_tuner_tiles.json").read_text())]
    for name in ("wgmma_sweep.json", "wgmma_picks.json", "wgmma_two_blocks.json", "wgmma_smem.json",
                 "wgmma_scales_in_a.json", "wgmma_rolling_wait.json", "wgmma_sa_widths.json"):
        for c in json.loads((root / name).read_text()):
            KernelSpec(**c[0])
    covered = {(s.bits, s.block_m, s.block_n, s.num_warps, s.num_stages, s.a_regs, s.a_scales, s.stream_k,
                s.rolling_wait) for s in check}
    for tiles in tune.WGMMA_TILES.values():
        for bm, bn, warps, stages, loop, per_sm in tiles:
            f = tune.WGMMA_LOOPS[loop]
            for bits in (4, 8):
                fields = dict(bits=bits, variant="wgmma", block_m=bm, block_n=bn, block_k=128, num_warps=warps,
                              num_stages=stages, stream_k=per_sm > 0, **f)
                try:
                    KernelSpec(**fields)
                except KernelSpecError as e:  # (the tuner skips it at this width: a ring too big)
                    assert "bytes of shared memory" in str(e)
                    continue
                tile = (bm, bn, warps, stages, f.get("a_regs", False), f.get("a_scales", False), per_sm > 0,
                        f.get("rolling_wait", False))
                assert (bits, *tile) in covered
    assert all(dataclasses.asdict(s)["variant"] == "wgmma" for s in check)
