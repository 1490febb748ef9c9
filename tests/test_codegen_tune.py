"""Invariants of the autotuner's candidate lists (codegen/tune.py): every (spec, split) is valid for its shape."""
import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcomp.codegen import tune
from qcomp.codegen.kernel_spec import KernelSpec
from qcomp.codegen.precompile import KernelCall, jobs_for


@settings(max_examples=200, deadline=None)
@given(m=st.integers(1, 512), n=st.integers(1, 40000), k_tiles=st.integers(1, 256), bits=st.integers(1, 8),
       had=st.sampled_from([0, 128]))
def test_candidates_are_valid_and_split_leaves_work(m, n, k_tiles, bits, had):
    k = 128 * k_tiles
    if had and k % had:
        return
    base = KernelSpec(bits=bits, group_size=128, had_block=had if m <= 16 else 0, block_m=1,
                      block_k=max(128, had))
    cands = tune.candidates(base, m, n, k)
    assert cands, "no candidate"
    assert len(set(cands)) == len(cands), "duplicate candidates"
    for spec, split in cands:
        spec.validate()
        steps = -(-k // spec.block_k)
        assert split >= 1
        assert split == 1 or 2 * split <= steps, f"split {split} leaves a program < 2 K steps ({steps} steps)"
        if m > 16:
            assert spec.variant == "gemm"
    if m <= 16:
        assert cands[0][0].variant == "gemv", "the untuned default on CPU (interpreter) must be the gemv"
    gpu_all = tune.candidates(base, m, n, k, torch.device("cuda"))
    gpu = [c for c in gpu_all if not c[0].a_regs]
    twins = [c for c in gpu_all if c[0].a_regs]
    assert all((dataclasses.replace(t, a_regs=False, a_scales=False), sp) in gpu or (t.block_n, t.block_k // base.p,
               t.num_warps, t.num_stages) in tune.A_REGS_SMALL_M for t, sp in twins), "a twin without its tile"
    assert all(((dataclasses.replace(t, a_scales=True), sp) in twins) == (t.group_size != -1 and t.scale_per_tile)
               for t, sp in twins if not t.a_scales and t.block_m >= tune.A_SCALES_MIN_BLOCK_M), \
        "every registers tile of >= A_SCALES_MIN_BLOCK_M rows with group scales also tries them in A"
    assert not any(t.a_scales and t.block_m < tune.A_SCALES_MIN_BLOCK_M for t, _ in twins)
    assert bool(twins) == (bits in (1, 2, 4, 8) and any(c[0].variant == "gemm" and c[0].block_k >= 128 * max(1, 4 // bits)
                                                        and c[0].scale_per_tile for c in gpu)), \
        "on a GPU every eligible tensor-core tile is also tried with its weights in registers"
    if 4 < m <= 16 and not base.had_block:
        assert gpu == [c for c in cands if c[0].variant == "gemm"], \
            "on a GPU, 4 < M <= 16 tries the tensor-core tiles alone (slow-compiling 16-row gemvs left out)"
        assert (gpu[0][0].variant, gpu[0][0].block_m, gpu[0][0].block_n) == ("gemm", 16, 128), \
            "on a GPU the untuned default for 4 < M <= 16 is the tensor-core tile (the H100's M=16 winner)"
    else:
        assert sorted(gpu, key=str) == sorted(cands, key=str), "the same candidates on a GPU, maybe in another order"
        if m <= 16:
            assert gpu[0][0].variant == "gemv"


def test_gemv_splits_cover_the_sweep_choices():
    # 28672 x 8192 at M=1: the H100 sweep's best configurations used split 8 and 16 (benchmarks/RESULTS_kernels.md)
    splits = {s for spec, s in tune.candidates(KernelSpec(bits=4, block_m=1, block_k=128), 1, 28672, 8192)
              if spec.block_n == 64 and spec.num_warps == 2}
    assert {8, 16} <= splits
    # K of one step: nothing to split
    assert tune._gemv_splits(progs=10, steps=1, sms=132) == [1]


def test_gemv_splits_setting_widens_the_candidates_and_keys_them_apart(monkeypatch):
    """QCOMP_GEMV_SPLITS replaces the split-K counts tried for gemv tiles (each still leaving >= 2 K steps a
    program); the choice cache keys carry the override, so an A/B in one process never reuses the other's picks."""
    base = KernelSpec(bits=3, block_m=1, block_k=128, act_dtype="bf16", had_block=128)
    key0 = tune._key(base, 1, 28672, 4096, None)
    assert tune._gemv_splits(progs=448, steps=32, sms=132) == [16, 8, 4]
    monkeypatch.setenv("QCOMP_GEMV_SPLITS", "32,24,12,6,3")
    assert tune._gemv_splits(progs=448, steps=32, sms=132) == [12, 6, 3]  # 32 and 24 would leave < 2 steps
    splits = {s for spec, s in tune.candidates(base, 1, 28672, 4096) if spec.block_n == 64}
    assert splits == {12, 6, 3}
    key1 = tune._key(base, 1, 28672, 4096, None)
    assert key1 != key0 and key1.endswith("|splits 32,24,12,6,3")
    for bad in ("8,x", "1,4", "0"):
        monkeypatch.setenv("QCOMP_GEMV_SPLITS", bad)
        with pytest.raises(ValueError, match="QCOMP_GEMV_SPLITS=.*comma-separated split-K counts >= 2"):
            tune.candidates(base, 1, 28672, 4096)


def test_sweep_script_specs_are_valid_kernel_specs():
    """benchmarks/sweep_gemv.py runs only on a GPU; its spec list must still build on any machine."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import sweep_gemv

    for bits in (2, 3, 4, 8):
        for had in (0, 128):
            specs = sweep_gemv.specs_for(bits, had, 1)
            assert specs and all(s.variant == "gemv" and s.block_k >= max(128, had) for s in specs)
            deeper = sweep_gemv.specs_for(bits, had, 1, stages=[2, 3, 4])
            assert {s.num_stages for s in deeper} == {2, 3, 4} and len(deeper) > len(specs)
            narrow = sweep_gemv.specs_for(bits, had, 1, act="bf16", block_n=[32], block_k=[256], warps=[2])
            assert narrow and {(s.block_n, s.block_k, s.num_warps, s.act_dtype) for s in narrow} == {(32, 256, 2, "bf16")}
            # its compile jobs have the fields of codegen.precompile.jobs_for (the pool runs compile_jobs on them)
            base = KernelSpec(bits=bits, group_size=128, had_block=had, block_m=1, block_k=max(128, had))
            call = KernelCall(base, 1, 4096, 4096, "bfloat16", "float16", False, None)
            ref = jobs_for([call], torch.device("cuda"))[0]
            for job in sweep_gemv.compile_jobs_for(narrow, 1, 4096, 4096, "bf16"):
                assert len(job) == len(ref) and job[2:] == ref[2:] and KernelSpec.from_json(job[0]) in narrow


def test_choose_memoizes_without_rebuilding_candidates(monkeypatch):
    """A repeated call skips the candidate list (memo per base, M bucket, N, K, device); a settled choice (here
    from the choices cache, as after tuning) wins over the untuned default."""
    dev = torch.device("cpu")
    base = KernelSpec(bits=3, group_size=128, block_m=1, block_k=128)
    first = tune.choose(base, 1, 4160, 4096, dev, None)
    assert first == tune.candidates(base, 1, 4160, 4096, dev)[0]
    calls = []
    real = tune.candidates
    monkeypatch.setattr(tune, "candidates", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert tune.choose(base, 1, 4160, 4096, dev, None) == first and not calls
    settled = (tune.candidates(base, 1, 4176, 4096, dev)[-1][0], 4)
    calls.clear()
    monkeypatch.setitem(tune._CHOICES, tune._key(base, 1, 4176, 4096, dev), (settled[0].to_dict(), 4))
    assert tune.choose(base, 1, 4176, 4096, dev, None) == settled and not calls
    assert tune.choose(base, 1, 4176, 4096, dev, None) == settled


def test_tensor_core_tiles_try_more_splits_only_when_programs_are_few():
    # 28672 x 8192 at M=16: 224 tiles of 128 rows on 132 SMs, two per SM at most: split-K 2, 4, 8 are candidates
    gpu = torch.device("cuda")
    base = KernelSpec(bits=4, block_m=1, block_k=128)
    splits = {s for spec, s in tune.candidates(base, 16, 28672, 8192, gpu) if spec.variant == "gemm"}
    assert {2, 4, 8} <= splits
    # M=256: 448 tiles of 128 x 128 fill the GPU over three times: one split per tile
    for spec, s in tune.candidates(base, 256, 28672, 8192, gpu):
        assert s == 1 or -(-256 // spec.block_m) * -(-28672 // spec.block_n) < 2 * 132


def test_tune_timer_is_checked(monkeypatch):
    monkeypatch.setenv("QCOMP_TUNE_TIMER", "stopwatch")
    import pytest

    with pytest.raises(ValueError, match="QCOMP_TUNE_TIMER='stopwatch'"):
        tune._timer(torch.device("cpu"))
    monkeypatch.setenv("QCOMP_TUNE_TIMER", "do_bench")
    assert callable(tune._timer(torch.device("cpu")))


def test_a_regs_setting(monkeypatch):
    """QCOMP_A_REGS: 0 leaves the twins out, 1 replaces each eligible tensor-core tile by its twin, a bad value names
    the choices; a choice made under an override is cached apart."""
    base = KernelSpec(bits=4, group_size=128, block_m=1)
    cuda = torch.device("cuda")
    both = tune.candidates(base, 64, 4096, 4096, cuda)
    monkeypatch.setenv("QCOMP_A_REGS", "0")
    off = tune.candidates(base, 64, 4096, 4096, cuda)
    assert off == [c for c in both if not c[0].a_regs] and len(off) < len(both)
    monkeypatch.setenv("QCOMP_A_REGS", "1")
    on = tune.candidates(base, 64, 4096, 4096, cuda)
    assert on == [c for c in both if c[0].a_regs or not any(t[0].a_regs and t[1] == c[1] and
                                                            dataclasses.replace(t[0], a_regs=False, a_scales=False) == c[0]
                                                            for t in both)]
    assert any(c[0].a_regs for c in on) and any(not c[0].a_regs for c in on)  # block_k 256 > group 128: no twin
    assert tune._key(base, 64, 4096, 4096, torch.device("cpu")).endswith("|a_regs 1")
    monkeypatch.setenv("QCOMP_A_REGS", "yes")
    with pytest.raises(ValueError, match="use 0, 1 or both"):
        tune.candidates(base, 64, 4096, 4096, cuda)


def test_a_scales_setting(monkeypatch):
    """QCOMP_A_SCALES: 0 leaves the scales-in-A twins out, 1 replaces each registers tile with group scales by its
    twin; a choice made under an override is cached apart."""
    base = KernelSpec(bits=4, group_size=128, block_m=1)
    cuda = torch.device("cuda")
    both = tune.candidates(base, 64, 4096, 4096, cuda)
    assert any(c[0].a_scales for c in both)
    monkeypatch.setenv("QCOMP_A_SCALES", "0")
    assert tune.candidates(base, 64, 4096, 4096, cuda) == [c for c in both if not c[0].a_scales]
    monkeypatch.setenv("QCOMP_A_SCALES", "1")
    on = tune.candidates(base, 64, 4096, 4096, cuda)
    assert on == [c for c in both if c[0].a_scales or not c[0].a_regs]
    assert tune._key(base, 64, 4096, 4096, torch.device("cpu")).endswith("|a_scales 1")
    monkeypatch.setenv("QCOMP_A_SCALES", "2")
    with pytest.raises(ValueError, match="QCOMP_A_SCALES='2'"):
        tune.candidates(base, 64, 4096, 4096, cuda)


@pytest.mark.parametrize("fields,m,on", [(dict(bits=2), 1, True), (dict(bits=2), 2, False), (dict(bits=3), 1, False),
                                         (dict(bits=4), 1, False), (dict(bits=2, had_block=128), 1, False),
                                         (dict(bits=1, grid="lut", p=2, block_k=256), 1, False)])
def test_gemv_x_ahead_only_where_it_was_timed_faster(fields, m, on):
    """tune.gemv_x_ahead: x loaded ahead for one row of 2-bit uniform codes (1-5 % faster on the H100), nowhere else
    (w3 17-26 % slower). (The x_once / had_once twins load their operands ahead everywhere: the next test.)"""
    gemvs = [spec for spec, _ in tune.candidates(KernelSpec(**fields), m, 4096, 4096)
             if spec.variant == "gemv" and not (spec.x_once or spec.had_once)]
    assert gemvs and all(spec.x_ahead == on for spec in gemvs)


@pytest.mark.parametrize("fields,m,offered", [(dict(bits=8), 1, True), (dict(bits=8), 2, False),
                                              (dict(bits=4), 1, False), (dict(bits=4, grid="lut", p=2, block_k=256), 1,
                                                                         True), (dict(bits=8, had_block=128), 1, True)])
def test_tma_words_twins_for_8_bit_codes(fields, m, offered):
    """tune.gemv_tma_words: every M=1 gemv tile of 8-bit codes (a 4-bit table of pairs included) also runs with its
    words through the TMA ring (2-3 % faster at w8 on the H100), no other width (w2 / w4 slower); the key says so."""
    base = KernelSpec(**fields)
    cands = tune.candidates(base, m, 4096, 4096)
    twins = [s for s, _ in cands if s.tma_words]
    assert bool(twins) == offered and all(s.num_stages == tune.GEMV_TMA_STAGES for s in twins)
    if offered:
        plain = {dataclasses.replace(s, tma_words=False, num_stages=2) for s in twins}
        assert plain <= {s for s, _ in cands if s.variant == "gemv"}
    assert tune._key(base, m, 4096, 4096, torch.device("cpu")).endswith("|tma39") == (m == 1 and base.code_bits == 8)


def test_gemv_cp_async_twins_follow_their_setting(monkeypatch):
    """With QCOMP_GEMV_CP_ASYNC=1 each gemv tile (and its had_once form) is also tried as a cp_async twin on CUDA;
    never by default (slower on the H200, session 37) nor on the CPU; a bad value names the choices; the candidates
    are otherwise those without the setting."""
    base = KernelSpec(bits=2, group_size=128, had_block=128, block_m=1)
    cuda = torch.device("cuda")
    off = tune.candidates(base, 1, 4096, 4096, cuda)
    assert not any(s.cp_async for s, _ in off) and any(s.had_once for s, _ in off)
    monkeypatch.setenv("QCOMP_GEMV_CP_ASYNC", "1")
    on = tune.candidates(base, 1, 4096, 4096, cuda)
    twins = [s for s, _ in on if s.cp_async]
    assert twins and all(s.num_stages == tune.GEMV_CP_ASYNC_STAGES and not s.x_ahead for s in twins)
    assert any(s.had_once for s in twins) and not any(s.had_scratch for s in twins)
    assert [c for c in on if not c[0].cp_async] == off
    assert sorted((s for s, _ in on if s.cp_async), key=str) == sorted(
        (tune.gemv_cp_async_twin(s) for s, _ in off if not s.had_scratch), key=str)
    assert not any(s.cp_async for s, _ in tune.candidates(base, 1, 4096, 4096))  # CPU: the interpreter
    monkeypatch.setenv("QCOMP_GEMV_CP_ASYNC", "yes")
    with pytest.raises(ValueError, match="QCOMP_GEMV_CP_ASYNC"):
        tune.candidates(base, 1, 4096, 4096, cuda)


@pytest.mark.parametrize("m, n, k", [(1, 28672, 8192), (1, 8192, 28672), (16, 28672, 28672), (8, 4096, 14336)])
def test_had_once_candidates_keep_their_scratch_bounded(m, n, k):
    """had_once keeps the rotated x once per N tile (kernel_spec.once_scratch_floats): the tuner offers it only
    where that stays under ONCE_SCRATCH_MAX_BYTES, which the M=1 decode shapes do (a few MB) and 16-row tiles of
    the widest layers do not (GBs)."""
    from qcomp.codegen.kernel_spec import ONCE_SCRATCH_MAX_BYTES, once_scratch_floats

    base = KernelSpec(bits=2, group_size=128, had_block=128, block_m=1)
    cands = tune.candidates(base, m, n, k)
    once = [(s, sp) for s, sp in cands if s.had_once]
    assert all(4 * once_scratch_floats(s, m, n, k, sp) <= ONCE_SCRATCH_MAX_BYTES for s, sp in once)
    twin = lambda s: dataclasses.replace(s, had_scratch=False, had_once=True)  # noqa: E731
    left_out = [(s, sp) for s, sp in cands if s.had_scratch
                and 4 * once_scratch_floats(twin(s), m, n, k, sp) > ONCE_SCRATCH_MAX_BYTES]
    assert len(once) + len(left_out) == sum(s.had_scratch for s, _ in cands)  # every other tile has its had_once twin
    if m == 1:
        assert once and not left_out
    if m == 16 and n == 28672:
        assert left_out


def test_tuning_skips_a_candidate_that_disagrees_with_the_first():
    """time_candidates checks every candidate's output against the first that runs: a wrong kernel (here one off by
    10 %, one with NaN) is skipped with a warning even where it is the fastest; rounding-level differences are not."""
    specs = [(KernelSpec(bits=4, block_m=1, block_n=bn), 1) for bn in (16, 32, 64, 128)]
    y = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    outs = {16: y, 32: y * 1.1, 64: torch.full_like(y, float("nan")), 128: y + 1e-3 * y.abs().max()}
    speed = {16: 9.0, 32: 1.0, 64: 2.0, 128: 5.0}  # the wrong ones fastest

    def run(spec, split):
        return outs[spec.block_n]

    def timer(fn):  # (fn runs the candidate: its output names it)
        out = fn()
        return next(speed[bn] for bn in outs if outs[bn] is out)

    with pytest.warns(RuntimeWarning, match="gives another result") as rec:
        best, t = tune.time_candidates(specs, run, timer)
    assert best == specs[3] and t == 5.0 and len(rec) == 2  # block_n 32 and 64 skipped, 128 (rounding) kept

    def first_fails(spec, split):
        if spec.block_n == 16:
            raise RuntimeError("out of resources")
        return run(spec, split)

    with pytest.warns(RuntimeWarning, match="another result than .*n32"):
        best, _ = tune.time_candidates(specs, first_fails, timer)
    assert best == specs[1]  # y * 1.1 is the reference now: the others disagree with it


@pytest.mark.parametrize("bits, had, offered", [(1, 0, True), (2, 0, True), (3, 0, False), (4, 0, False),
                                                (2, 128, False)])
def test_x_once_twins_only_where_they_were_not_slower(bits, had, offered):
    """x_once twins (x_ahead on) join the M=1 candidates for unrotated 1- and 2-bit codes only (tune.gemv_x_once);
    had_once twins load their operands ahead too."""
    base = KernelSpec(bits=bits, group_size=128, had_block=had, block_m=1)
    cands = tune.candidates(base, 1, 28672, 8192)
    twins = [s for s, _ in cands if s.x_once]
    assert bool(twins) == offered and all(s.x_ahead for s in twins)
    assert all(s.x_ahead for s, _ in cands if s.had_once) and (any(s.had_once for s, _ in cands) == bool(had))


def test_gemv_row_acc_twins_follow_their_setting(monkeypatch):
    """With QCOMP_GEMV_ROW_ACC=1 each M=1 gemv tile is also tried with one accumulator per row, right after it, on
    CUDA only; never by default (not timed yet), never at M > 1; the key keeps those choices apart; a bad value names
    the choices."""
    base = KernelSpec(bits=4, group_size=128, block_m=1)
    cuda = torch.device("cuda")
    off = tune.candidates(base, 1, 4096, 4096, cuda)
    assert not any(s.row_acc for s, _ in off)
    monkeypatch.setenv("QCOMP_GEMV_ROW_ACC", "1")
    on = tune.candidates(base, 1, 4096, 4096, cuda)
    assert [c for c in on if not c[0].row_acc] == off
    assert [c for c in on if c[0].row_acc] == [(dataclasses.replace(s, row_acc=True), sp) for s, sp in off
                                                if s.variant == "gemv"]
    assert on.index((dataclasses.replace(off[0][0], row_acc=True), off[0][1])) == 1
    assert not any(s.row_acc for s, _ in tune.candidates(base, 1, 4096, 4096))  # CPU: the interpreter
    assert not any(s.row_acc for s, _ in tune.candidates(KernelSpec(bits=4, block_m=4), 3, 4096, 4096, cuda))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "H100")  # (the key names the GPU)
    assert tune._key(base, 1, 4096, 4096, cuda).endswith("|row_acc")
    assert not tune._key(base, 4, 4096, 4096, cuda).endswith("|row_acc")
    monkeypatch.setenv("QCOMP_GEMV_ROW_ACC", "yes")
    with pytest.raises(ValueError, match="QCOMP_GEMV_ROW_ACC"):
        tune.candidates(base, 1, 4096, 4096, cuda)
