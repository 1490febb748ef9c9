"""KernelSpec.rolling_wait: the wgmma TMA loop (with a_scales) keeps its slots' wgmmas in flight across K steps, one
wait per slot retiring the step before's slot (codegen/gemm_wgmma._rolling_slot_lines); and the static check that
no new A value lands in registers an in-flight wgmma still reads (benchmarks/kernel_sass.wgmma_a_hazards)."""
import ast
import sys
from pathlib import Path

import pytest

from qcomp.codegen.kernel_spec import KernelSpec, KernelSpecError
from qcomp.codegen.render import kernel_source

from test_kernel_sass import sass_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kernel_sass import wgmma_a_hazards  # noqa: E402

RW = dict(bits=4, variant="wgmma", block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=3, a_scales=True,
          rolling_wait=True)


@pytest.mark.parametrize("fields, why", [
    (dict(a_scales=False), "rolling_wait only with a_scales"),
    (dict(num_stages=2), "num_stages >= 3"),
    (dict(stream_k=True), "without stream_k"),
])
def test_spec_refuses_what_the_rolling_loop_cannot_run(fields, why):
    with pytest.raises(KernelSpecError, match="variant 'wgmma'") as e:
        KernelSpec(**{**RW, **fields})
    assert why in str(e.value)


def test_rolling_wait_needs_the_wgmma_variant():
    with pytest.raises(KernelSpecError, match="rolling_wait .* needs the wgmma variant"):
        KernelSpec(bits=4, variant="gemv", block_m=1, block_n=64, block_k=128, num_warps=2, rolling_wait=True)


def test_spec_json_leaves_the_field_out_when_off():
    """Specs without it keep their JSON, digest and tuning keys."""
    off = KernelSpec(**{**RW, "rolling_wait": False})
    assert "rolling_wait" not in off.to_json() and '"rolling_wait": true' in KernelSpec(**RW).to_json()
    assert KernelSpec(**RW).name().endswith("_sa_rw_m128n128k128w8s3")


@pytest.mark.parametrize("bits", [4, 8])
def test_source_waits_after_each_slot_for_the_step_befores_slot(bits):
    """Each slot: dequantize, wgmma, then a wait that leaves slots - 1 in flight (it retires the step before's next
    slot, whose registers the next dequantization rewrites); no wait drains a step inside the loop, one after it.
    A stage is refilled two steps after its use (step it - 1's wgmmas are still in flight at step it's head), so
    the ring's first fill covers STAGES - 2 steps."""
    spec = KernelSpec(**{**RW, "bits": bits})
    src = kernel_source(spec)
    ast.parse(src)
    slots = 32 // bits
    lines = src.splitlines()
    start = lines.index("    for step in range(lo, hi):")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("    ") and not lines[i][4].isspace())
    loop = lines[start:end]
    mmas = [i for i, ln in enumerate(loop) if "warpgroup_mma(" in ln]
    waits = [i for i, ln in enumerate(loop) if "warpgroup_mma_wait(" in ln]
    assert len(mmas) == len(waits) == slots
    assert all(w == m + 1 for m, w in zip(mmas, waits))
    assert all(f"num_outstanding={slots - 1}," in loop[w] for w in waits)
    assert lines[end] == "    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))"
    assert "nxt = step + STAGES - 2" in src and "(it + STAGES - 2) % STAGES" in src
    assert "for p in gl.static_range(STAGES - 2):  # the first steps" in src
    assert src.count("pack=2) * sc") == slots and "acc_s" not in src


def test_hazard_check_finds_a_write_to_an_in_flight_a_register():
    """The checker's own cases: a write into an in-flight wgmma's A registers is found, also one carried over the
    loop's back edge into the second pass; a write after the wait that retires that wgmma is not."""
    body = [
        "HGMMA.64x128x16.F32 R24, R88, gdesc[UR4], R24, gsb0 ;",
        "HGMMA.64x128x16.F32 R24, R92, gdesc[UR4], R24, gsb0 ;",
        "WARPGROUP.DEPBAR.LE gsb0, 0x1 ;",  # retires the R88 one
        "LOP3.LUT R89, R1, 0x1e001e, R2, 0xea, !PT ;",  # fine: its wgmma is retired
        "HADD2 R94, R94, -1039, -1039 ;",  # R92..R95 still in flight
    ]
    hz = wgmma_a_hazards(body)
    assert hz and all("R94" in h for h in hz) and len(hz) == 2  # once per pass
    assert not wgmma_a_hazards(body[:2] + ["WARPGROUP.DEPBAR.LE gsb0, 0x0 ;"] + body[3:])
    carried = [
        "@P0 LDS.64 R90, [R1+0x10] ;",  # pass 2: the R88 wgmma of pass 1 is still in flight
        "HGMMA.64x128x16.F32 R24, R88, gdesc[UR4], R24, gsb0 ;",
        "WARPGROUP.DEPBAR.LE gsb0, 0x1 ;",
    ]
    hz = wgmma_a_hazards(carried)
    assert len(hz) == 1 and hz[0].startswith("pass 2: @P0 LDS.64 R90") and "R90" in hz[0]
    assert not wgmma_a_hazards(["HGMMA.64x128x16.F32 R24, R88, gdesc[UR4], R24, gsb0 ;",
                                "STS.64 [R88], R90 ;", "WARPGROUP.DEPBAR.LE gsb0, 0x0 ;"])


@pytest.mark.parametrize("bits, block_m, waits", [(4, 128, "0x7"), (8, 128, "0x3"), (4, 256, "0x7")])
def test_static_sm90_rolling_loop_keeps_slots_in_flight_without_hazards(bits, block_m, waits):
    """Compiled for sm_90: one wait per slot that leaves slots - 1 wgmmas in flight (ptxas did not serialize them
    with full waits, as it does where it cannot keep the slots' registers apart: m64 n128 8 warps), no write into
    an in-flight wgmma's A registers, no spills."""
    r = sass_report({**RW, "bits": bits, "block_m": block_m})
    slots = 32 // bits
    assert r["wgmma_waits"] == [f"WARPGROUP.DEPBAR.LE gsb0, {waits} "] * slots, r["wgmma_waits"]
    assert r["wgmma_a_hazards"] == [] and r["local_memory"] == 0
