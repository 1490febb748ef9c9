"""The generated source of one spec against a golden file, so that kernel changes show up in review.

Regenerate after an intended change: QCOMP_UPDATE_GOLDEN=1 pytest tests/test_codegen_golden.py
"""
import os
from pathlib import Path

import pytest

from qcomp.codegen.kernel_spec import KernelSpec
from qcomp.codegen.render import kernel_source

GOLDENS = {  # file in tests/golden -> spec
    "codegen_gemv_w3_lut_g32_h128.py.txt": KernelSpec(bits=3, grid="lut", p=1, group_size=32, had_block=128,
                                                      variant="gemv", block_m=1, block_n=64, block_k=128),
    # the decode step's qkv / gate_up kernel under fuse-norm: RMSNorm, half2 pairs, fused rotation
    "codegen_gemv_w3_bf16_h128_rms.py.txt": KernelSpec(bits=3, group_size=128, act_dtype="bf16", had_block=128,
                                                       variant="gemv", block_m=1, block_n=64, block_k=128,
                                                       num_warps=2, num_stages=2, x_norm=True),
    # the tensor-core tile that keeps its weights in registers: one tl.dot per slot, PTX per weight pair
    "codegen_gemm_w4_regs.py.txt": KernelSpec(bits=4, group_size=128, variant="gemm", block_m=16, block_n=128,
                                              block_k=128, num_stages=4, group_m=1, a_regs=True),
}


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_generated_source_matches_golden(name):
    golden = Path(__file__).parent / "golden" / name
    src = kernel_source(GOLDENS[name])
    if os.environ.get("QCOMP_UPDATE_GOLDEN") == "1":
        golden.write_text(src)
    assert src == golden.read_text(), f"generated source changed; diff against {golden} and regenerate if intended"


def test_source_is_specialised_per_spec():
    a = kernel_source(GOLDENS["codegen_gemv_w3_lut_g32_h128.py.txt"])
    b = kernel_source(KernelSpec(bits=5, grid="uniform", group_size=128, block_m=2, block_k=128))
    c = kernel_source(KernelSpec(bits=2, grid="lut", group_size=32, block_m=1, block_k=128))
    d = kernel_source(KernelSpec(bits=4, grid="uniform", group_size=128, variant="gemm", block_m=32, block_k=128))
    assert "4-bit plane" in b and "1-bit plane" in b and "2-bit plane" not in b
    assert "lut_ptr + code" in a and "lut_ptr + code" not in b and "lut_ptr + code" not in c  # c: select tree
    assert "tl.where((code & 2) != 0" in c
    # 2- and 4-bit tables with one scale per K step: the table in registers, PRMT lookups in the half2 path
    for bits in (2, 4):
        f = kernel_source(KernelSpec(bits=bits, grid="lut", group_size=128, block_m=1, block_k=128))
        assert "= _lut_pairs(word_" in f and "prmt.b32" in f and "lut_ptr + code" not in f and " - ev, " in f
    assert "butterfly" in a and "butterfly" not in b and "tl.dot" not in a + b + c and "tl.dot" in d
    assert "acc1" in b and "acc2" not in b  # one accumulator set per activation row (block_m = 2)
    # 5-bit codes (planes 4 + 1) take the packed-half2 path: the 1-bit plane's two slots join each pair
    assert "_deq2(" in b and "ws_1 = word_1 >> sh_1[None, :]" in b and "& pm_1)" in b and "0x4a800000" not in b
    assert "pm_1 = tl.where(K > 0, 0x200020, 0)" in b  # the 1-bit plane's bit lands at bit 5 of 2 * code + 512
    e = kernel_source(KernelSpec(bits=8, grid="uniform", group_size=128, block_m=1, block_k=128))
    assert "_deq2(" not in e  # 8-bit codes stay in fp32 ((code - z) * x could leave the fp16 range)
    assert "0x4a800000" in e and ".to(tl.float32)" not in e.split("# slot 0", 1)[1].split("# slot 1")[0]
