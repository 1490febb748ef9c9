"""The generated source of one spec against a golden file, so that kernel changes show up in review.

Regenerate after an intended change: QCOMP_UPDATE_GOLDEN=1 pytest tests/test_codegen_golden.py
"""
import os
from pathlib import Path

from qcomp.codegen.kernel_spec import KernelSpec
from qcomp.codegen.render import kernel_source

GOLDEN = Path(__file__).parent / "golden" / "codegen_gemv_w3_lut_g32_h128.py.txt"
SPEC = KernelSpec(bits=3, grid="lut", p=1, group_size=32, had_block=128, variant="gemv", block_n=64, block_k=128)


def test_generated_source_matches_golden():
    src = kernel_source(SPEC)
    if os.environ.get("QCOMP_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(src)
    assert src == GOLDEN.read_text(), f"generated source changed; diff against {GOLDEN} and regenerate if intended"


def test_source_is_specialised_per_spec():
    a = kernel_source(SPEC)
    b = kernel_source(KernelSpec(bits=5, grid="uniform", group_size=128, block_k=128))
    assert "4-bit plane" in b and "1-bit plane" in b and "2-bit plane" not in b
    assert "lut_ptr + code" in a and "lut_ptr + code" not in b
    assert "tl.dot(xr, hmat)" in a and "hmat" not in b.split('"""', 2)[2]
