"""The registers tile's slot PTX (codegen/gemm_regs.slot_ptx) run by the PTX model on the CPU: for every width and
slot, the two fp16 it returns are 2 * code - (2^w - 1) of that slot in each of the two words, exactly. The GPU runs
this text (benchmarks check its results against the reference); the CPU interpreter runs the plain-Triton twin."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ptx_model import M32, f16x2, run_ptx

from qcomp.codegen import gemm_regs


@settings(max_examples=200, deadline=None)
@given(bits=st.sampled_from([1, 2, 4, 8]), shared=st.booleans(), a=st.integers(0, M32), b=st.integers(0, M32))
def test_slot_ptx_gives_every_code_exactly(bits, shared, a, b):
    nb = 2 ** bits - 1
    for j in range(32 // bits):
        ptx, _ = gemm_regs.slot_ptx(bits, j, shared)
        out = run_ptx(ptx, {"$1": a, "$2": b})["$0"]
        got = f16x2(out).astype(np.float64)
        want = [2 * ((word >> (j * bits)) & nb) - nb for word in (a, b)]
        assert list(got) == want, f"slot {j} of words {a:#010x}, {b:#010x} at {bits} bits"


def test_slots_of_a_half_share_two_shifts():
    """Each slot's code lands inside 1024's mantissa (bits 1..9), and the slots of one half use only two shifted
    copies of it (left by 1, right by 7), which ptxas computes once each."""
    for bits in (1, 2, 4, 8):
        shifts = set()
        for j in range(32 // bits):
            shift, at = gemm_regs.slot_position(bits, j, True)
            assert 1 <= at and at + bits <= 10
            shifts.add(shift)
        assert shifts <= {"shl.b32 p, p, 1; ", "shr.b32 p, p, 7; "}


def test_shared_shifts_auto_takes_tiles_of_64_rows(monkeypatch):
    """'auto' (the H100 A/B of session 27): tiles of >= 64 activation rows share the shifts, m16 tiles keep one
    shift per slot; True / False force either; anything else is a clear error."""
    from qcomp.codegen.kernel_spec import KernelSpec
    from qcomp.codegen.render import kernel_source

    def src(block_m):
        return kernel_source(KernelSpec(bits=4, variant="gemm", block_m=block_m, block_n=128, block_k=128,
                                        num_warps=4, num_stages=4, a_regs=True, a_scales=block_m >= 64))

    def shifts(block_m):  # the distinct shifts of the slots' PTX
        return set(re.findall(r"(?:shl|shr)\.b32 p, p, \d+", src(block_m)))

    two = {"shl.b32 p, p, 1", "shr.b32 p, p, 7"}
    assert shifts(64) == two and shifts(128) == two
    assert "shr.b32 p, p, 3" in shifts(16)  # w4 slot 1: its own shift to bit 1
    monkeypatch.setattr(gemm_regs, "SHARED_SHIFTS", True)
    assert shifts(16) == two
    monkeypatch.setattr(gemm_regs, "SHARED_SHIFTS", False)
    assert "shr.b32 p, p, 3" in shifts(64)
    monkeypatch.setattr(gemm_regs, "SHARED_SHIFTS", "on")
    with pytest.raises(ValueError, match="SHARED_SHIFTS"):
        src(64)
