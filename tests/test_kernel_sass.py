"""benchmarks/kernel_sass.py: a generated kernel compiles for sm_90 without a GPU and its K loop is found."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sass_report(spec: dict, *args: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_sass.py"), json.dumps(spec), "--json", *args],
                         capture_output=True, text=True, env=env, timeout=300)
    if out.returncode and "nvdisasm not found" in out.stderr + out.stdout:
        pytest.skip("this Triton wheel bundles no nvdisasm")
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout[out.stdout.index("{"):])


def test_gemv_loop_is_found_and_counted():
    r = sass_report({"bits": 4, "variant": "gemv", "block_m": 1, "block_n": 64, "block_k": 128, "num_warps": 2,
                     "num_stages": 2})
    assert r["kernel"] == "qlinear_gemv_w4_uniform_g128_fp16_m1n64k128w2s2"
    # 64 rows x 16 words x 8 codes over 64 threads = 128 codes per thread and K step
    assert r["codes_per_thread_per_step"] == 128
    assert r["global_loads"] >= 4 and r["loop_instructions"] > 128  # at least one instruction per code
    assert sum(r["opcodes"].values()) == r["loop_instructions"]
    assert any(op.startswith("HFMA2") for op in r["opcodes"])  # the packed-half2 path of 4-bit codes


@pytest.mark.parametrize("spec", [
    {"bits": 4, "variant": "gemv", "block_m": 1, "block_n": 64, "block_k": 128, "num_warps": 2},
    {"bits": 4, "variant": "wgmma", "block_m": 64, "block_n": 64, "block_k": 128, "num_warps": 4, "num_stages": 3},
])
def test_scoreboards_pair_the_loop_loads_with_their_waiters(spec):
    """--waits decodes the control bits: every global load of the K loop sets a scoreboard, and every other listed
    instruction waits for one that a listed load (or mbarrier wait) sets; addresses rise through the loop."""
    rows = sass_report(spec, "--waits")["scoreboards"]
    loads = [r for r in rows if "LDG" in r[1]]
    assert loads and all(r[2] is not None for r in loads)
    sources = {r[2] for r in rows if "LDG" in r[1] or "TRYWAIT" in r[1]}
    assert all(set(r[3]) & sources for r in rows if not any(op in r[1] for op in ("LDG", "TRYWAIT", "DEPBAR")))
    assert any(set(r[3]) & {r2[2] for r2 in loads} for r in rows)  # someone waits for the loads
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)


@pytest.mark.parametrize("pdl", [0, 1, 2])
def test_pdl_levels_compile_to_their_grid_dependency_instructions(pdl):
    """QCOMP_PDL's levels as the kernel's PDL constexpr: 0 nothing, 1 the wait before reading x, 2 also the signal
    that lets the next kernel launch early (griddepcontrol.launch_dependents)."""
    r = sass_report({"bits": 3, "variant": "gemv", "block_m": 1, "block_n": 64, "block_k": 128, "num_warps": 2,
                     "num_stages": 2, "act_dtype": "bf16", "had_block": 128}, "--pdl", str(pdl))
    assert (r["pdl_wait"], r["pdl_trigger"]) == (pdl >= 1, pdl == 2)
    assert r["registers"] is None or 32 <= r["registers"] <= 255


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_weights_in_registers_feed_the_wgmma_from_registers(bits):
    """a_regs (codegen/gemm_regs.py): its PTX assembles (ptxas) and the K loop reads no dequantized weight tile back
    from shared memory (no LDSM; at most the one store Triton's pipeline keeps), with wgmma (HGMMA) doing the
    products. The plain tile's loop, for contrast, is longer."""
    spec = {"bits": bits, "variant": "gemm", "block_m": 16, "block_n": 128, "block_k": 128 * max(1, 4 // bits),
            "group_size": -1, "num_warps": 4, "num_stages": 4}
    regs = sass_report({**spec, "a_regs": True})
    assert regs["kernel"].startswith(f"qlinear_gemm_w{bits}_uniform_gch_fp16_ra_")
    assert any(op.startswith("HGMMA") for op in regs["opcodes"])
    assert not any(op.startswith("LDSM") for op in regs["opcodes"]) and regs["shared_stores"] <= 1, regs["opcodes"]
    assert regs["loop_instructions"] < sass_report(spec)["loop_instructions"]


def test_scales_in_a_keep_the_weights_in_registers():
    """a_scales: the group scale read as an int32 word and multiplied into A keeps the wgmma's A operand in registers
    at num_stages 4 (no shared-memory store of weights in the K loop)."""
    spec = {"bits": 4, "variant": "gemm", "block_m": 64, "block_n": 128, "block_k": 128, "num_warps": 4,
            "num_stages": 4, "a_regs": True, "a_scales": True}
    r = sass_report(spec)
    assert r["kernel"].startswith("qlinear_gemm_w4_uniform_g128_fp16_ras_")
    assert any(op.startswith("HGMMA") for op in r["opcodes"]) and r["shared_stores"] == 0, r["opcodes"]


@pytest.mark.parametrize("bits", [2, 4])
def test_lut_gemv_looks_up_in_registers(bits):
    """lut_regs: the table's PTX assembles (ptxas), its lookups are PRMT and the K loop loads no table entry (the
    loop's global loads are the words, x and scales only: fewer than one per 8 codes)."""
    r = sass_report({"bits": bits, "grid": "lut", "variant": "gemv", "block_m": 1, "block_n": 64, "block_k": 128,
                     "num_warps": 2, "num_stages": 2})
    assert r["opcodes"].get("PRMT", 0) >= r["codes_per_thread_per_step"] // 8
    assert r["global_loads"] < r["codes_per_thread_per_step"] / 4, r["opcodes"]


def test_lut_tile_looks_up_in_registers():
    """lut_regs in the tensor-core tile (3-bit trio codes): PRMT lookups, no table load per weight in the K loop."""
    r = sass_report({"bits": 3, "grid": "lut", "variant": "gemm", "block_m": 32, "block_n": 64, "block_k": 128,
                     "num_warps": 4, "num_stages": 3})
    assert r["opcodes"].get("PRMT", 0) > 0 and any(op.startswith("HGMMA") for op in r["opcodes"])
    # a thread dequantizes 64 x 128 / 128 = 64 weights per K step; a table load per weight would be 64 loads
    assert r["global_loads"] < 64 / 2, r["opcodes"]


@pytest.mark.parametrize("bits, block_n, per_step", [(4, 64, 4), (5, 32, 4)])
def test_l2_ahead_loop_issues_one_bulk_prefetch_per_row_group_and_plane(bits, block_n, per_step):
    """KernelSpec.l2_ahead on sm_90: each K step asks the L2 for the words of the step l2_ahead ahead with one
    uniform bulk prefetch (UBLKPF.L2) per row group of 16 and plane, and adds no load to the loop."""
    spec = {"bits": bits, "variant": "gemv", "block_m": 1, "block_n": block_n, "block_k": 128, "num_warps": 2,
            "num_stages": 2}
    plain, ahead = sass_report(spec), sass_report({**spec, "l2_ahead": 4})
    assert ahead["opcodes"].get("UBLKPF.L2") == per_step and "UBLKPF.L2" not in plain["opcodes"]
    assert ahead["global_loads"] == plain["global_loads"] and ahead["local_memory"] == 0


def test_cp_async_gemv_loop_copies_its_words_into_shared_memory():
    """KernelSpec.cp_async on sm_90: the GEMV's K loop issues its loads as cp.async copies into shared memory
    (LDGSTS, committed per step: LDGDEPBAR) and reads them back from there (LDS), where the register-prefetch text
    loads the words into registers (LDG.E.128) and has no LDGSTS; neither spills."""
    spec = {"bits": 4, "variant": "gemv", "block_m": 1, "block_n": 64, "block_k": 128, "num_warps": 2, "num_stages": 4}
    plain, cpa = sass_report(spec), sass_report({**spec, "cp_async": True})
    ldgsts = sum(v for op, v in cpa["opcodes"].items() if op.startswith("LDGSTS"))
    assert ldgsts >= 4 and cpa["opcodes"].get("LDGDEPBAR", 0) >= 1
    assert any(op.startswith("LDS") for op in cpa["opcodes"])
    assert not any(op.startswith("LDGSTS") for op in plain["opcodes"]) and plain["opcodes"].get("LDG.E.128", 0) >= 4
    assert cpa["local_memory"] == 0 and plain["local_memory"] == 0
