"""The decode benchmark helpers that run without a GPU: kernel categories of profile_decode.py and the
--sensitivity-file pipeline edit of gpu_decode.py, and gpu_generate_speed.py on the CPU."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_decode  # noqa: E402
import profile_decode  # noqa: E402
from qcomp.pass_manager import parse_pipeline  # noqa: E402


@pytest.mark.parametrize("name,cat", [
    ("qlinear_gemv_w3_uniform_g128_bf16_h128_m1n64k128w2s2", "qlinear (generated)"),
    ("nvjet_sm90_tst_64x8_64x16_2x1_v_bz_splitK_TNT", "cuBLAS / matmul"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float>", "cuBLAS / matmul"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>", "fill / memset"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda", "cast / copy"),
    ("cudnn_generated_fort_native_sdpa_sm80_flash_fprop_wmma_f16", "attention"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, MeanOps", "reduce (norms)"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::CUDAFunctor_add<c10::BFloat16>", "elementwise"),
])
def test_kernel_categories(name, cat):
    assert profile_decode.category(name) == cat


def test_summarize_counts_and_totals():
    s = profile_decode.summarize([("qlinear_gemv_w4_x", 10.0), ("qlinear_gemv_w4_x", 12.0), ("Memset (Device)", 1.5)])
    assert s["launches"] == 3 and s["total_us"] == 23.5
    assert s["categories"]["qlinear (generated)"] == {"count": 2, "us": 22.0}
    assert s["top"][0] == {"name": "qlinear_gemv_w4_x", "count": 2, "us": 22.0}


def test_sensitivity_file_joins_allocate_bits_options():
    p = gpu_decode.with_sensitivity_file(gpu_decode.SPEED_PIPELINE, "a/b.json")
    opts = dict(parse_pipeline(p))["allocate-bits"]
    assert opts["sensitivity_file"] == "a/b.json" and opts["bits"] == [2, 3, 4, 5, 6, 8]
    assert gpu_decode.with_sensitivity_file(gpu_decode.SPEED_PIPELINE, None) == gpu_decode.SPEED_PIPELINE
    with pytest.raises(SystemExit, match="allocate-bits"):
        gpu_decode.with_sensitivity_file("default", "a/b.json")


def test_generate_speed_script_runs_on_the_cpu(tmp_path):
    """gpu_generate_speed.py end to end on the CPU (tiny config): both generators compile and generate, and the
    static generator's ids equal its graph's on the reference runtime (the same runtime here)."""
    import json

    import gpu_generate_speed

    assert gpu_generate_speed.main(["--config", "tiny", "--device", "cpu", "--tokens", "3", "--max-len", "16",
                                    "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "generate_speed.json").read_text())
    static, dynamic = res["rows"]
    assert static["first_difference_vs_reference"] is None and static["ms_per_token"] > 0
    assert dynamic["generator"].startswith("dynamic") and dynamic["ms_per_token"] > 0
