"""The decode benchmark helpers that run without a GPU: kernel categories of profile_decode.py and the
--sensitivity-file pipeline edit of gpu_decode.py, and gpu_generate_speed.py on the CPU."""
import os
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


def test_cpu_decode_step_script_compares_the_three_paths(capsys):
    """cpu_decode_step.py on the tiny config: the graph module computes the reference runtime's logits (the same
    reference math on the CPU, up to float32 rounding), and the table names each path."""
    import cpu_decode_step

    assert cpu_decode_step.main(["--model", "tiny", "--max-len", "16", "--no-inductor"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and "ms/step" not in ln]
    assert [r.split(" | ")[0] for r in rows] == ["| reference runtime (compiled(...))", "| graph module"]
    assert float(rows[1].rstrip(" |").split(" | ")[-1]) < 1e-5


def test_per_call_table_pairs_kernels_with_qlinear_nodes():
    """profile_decode.per_call: the generated kernels in launch order next to the graph's qlinear nodes; other
    kernels ignored; a count mismatch gives no table rather than a misattributed one."""
    from types import SimpleNamespace

    nodes = [SimpleNamespace(name=f"q{i}", attrs={"n": 64 * (i + 1), "k": 128, "spec": {"bits": 3 + i}})
             for i in range(2)]
    graph = SimpleNamespace(find=lambda op: nodes if op == "qlinear" else [])
    kernels = [("qlinear_gemv_w3_a", 5.0), ("elementwise_kernel", 1.0), ("qlinear_gemv_w4_b", 7.0)]
    rows = profile_decode.per_call(graph, kernels)
    assert [(r["node"], r["n"], r["bits"], r["us"]) for r in rows] == [("q0", 64, 3, 5.0), ("q1", 128, 4, 7.0)]
    assert profile_decode.per_call(graph, kernels[:2]) == []


def test_ab_kernels_cases_are_checked():
    import ab_kernels

    good = '[[{"bits": 4, "variant": "gemv", "block_m": 1, "block_n": 64, "block_k": 128}, 16, 28672, 8192]]'
    assert ab_kernels.load_cases(good)[0][1:] == (16, 28672, 8192)
    for bad, msg in [("nope", "not JSON"), ("[]", "non-empty"), ('[[{"bits": 4}, 0, 64, 128]]', "positive"),
                     ('[[{"bits": 4}, 1, 64, 100]]', "multiple of the pack tile"), ('[[{"bits": 9}, 1, 64, 128]]', "bits")]:
        with pytest.raises((SystemExit, ValueError), match=msg):
            ab_kernels.load_cases(bad)


def test_gpu_check_summary_reads_only_what_was_measured(tmp_path, capsys):
    """gpu_check.sh's table: targets judged from the rows present, "not run" for what is missing."""
    import json

    import gpu_check_summary

    cols = ["contestant", "b", "grid", "had", "NxK", "M", "us", "TBs", "x_copy", "x_fp16", "relerr", "kernel", "status"]

    def tsv(path, rows):
        path.parent.mkdir(parents=True)
        path.write_text("\n".join(["\t".join(cols)] + ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]))

    row = dict(grid="uniform", NxK="28672x8192", M=1, TBs=1, relerr=1e-4, status="ok")
    tsv(tmp_path / "kernels" / "bench_kernels.tsv", [
        {**row, "contestant": "qcomp-uniform", "b": 4, "had": 0, "us": 50.0, "x_copy": 0.6, "x_fp16": 2.2},
        {**row, "contestant": "qcomp-uniform-had128", "b": 4, "had": 128, "us": 52.0, "x_copy": 0.58, "x_fp16": 2.1},
        {**row, "contestant": "qcomp-uniform", "b": 8, "had": 0, "us": 60.0, "x_copy": 0.85, "x_fp16": 1.8},
        {**row, "contestant": "tinygemm-w4g128", "b": 4, "had": 0, "us": 64.0, "x_copy": 0.5, "x_fp16": 1.7},
        {**row, "contestant": "qcomp-uniform", "b": 2, "had": 0, "M": 1, "status": "SKIP budget"},  # no us: ignored
    ])
    (tmp_path / "decode").mkdir()
    (tmp_path / "decode" / "decode.json").write_text(json.dumps([
        {"config": "bf16 (eager + CUDA graph)", "batch": 1, "ms_per_step": 7.5},
        {"config": "qcomp budget 3.5 (torch.compile glue)", "batch": 1, "ms_per_step": 3.75}]))
    assert gpu_check_summary.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "w2: not run" in out and "w3: not run" in out
    assert "w4:    50.0   0.60 MISSED" in out and "+4% ok" in out
    assert "w8:    60.0   0.85 ok" in out and "w8:    60.0   0.85 ok   1.80   not run" in out
    assert "tinygemm-w4g128 M=1: 64.0 us, qcomp w4 50.0 us: ok" in out
    assert "marlin-quanto-w4g128 M=16: not run" in out
    assert "3.750 ms/step, 2.00x bf16 eager+graph (7.500 ms) MISSED" in out
    with pytest.raises(SystemExit, match="usage"):
        gpu_check_summary.main([])


def test_gpu_check_script_parses_and_names_its_summary():
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert "gpu_check_summary.py" in script.read_text()


def test_ab_kernels_loads_another_render_and_packing():
    """--old / --old-packing: a file imported as a sibling of qcomp.codegen (here this tree's own, so the results
    must match the tree's)."""
    import torch

    import ab_kernels
    from qcomp.codegen import packing, render
    from qcomp.codegen.kernel_spec import KernelSpec

    old_pack = ab_kernels._module(packing.__file__, "packing_ab_test").pack_codes
    codes = torch.randint(0, 8, (20, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(old_pack(codes, 3), packing.pack_codes(codes, 3))
    spec = KernelSpec(bits=3, block_m=1, block_n=32, block_k=128, num_warps=2, num_stages=2)
    assert ab_kernels._module(render.__file__, "render_ab_test").kernel_source(spec) == render.kernel_source(spec)


def test_inductor_variants_are_checked_before_any_work(capsys):
    """--inductor-variants names settings that exist in torch's inductor config, and needs --torch-compile."""
    import torch._inductor.config as inductor_config

    from qcomp.runtime.torch_compile import inductor_options

    for variant in gpu_decode.INDUCTOR_VARIANTS.values():
        with inductor_config.patch(inductor_options(**variant)):  # every key is a real setting of this torch
            pass
    for argv in (["--inductor-variants", "combo,nope", "--torch-compile"], ["--inductor-variants", "combo"]):
        with pytest.raises(SystemExit):
            gpu_decode.main(argv)
        assert "--inductor-variants takes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        profile_decode.main(["--inductor-variant", "combo"])
    assert "needs --torch-compile" in capsys.readouterr().err


def test_quantize_lm_head_needs_the_passes_it_edits(capsys):
    """--quantize-lm-head with a pipeline that cannot quantize the lm_head stops before any work, naming the steps."""
    with pytest.raises(SystemExit):
        gpu_decode.main(["--quantize-lm-head", "--pipeline", "canonicalize,quantize,lower"])
    assert "--quantize-lm-head: quantizing the lm_head needs ['allocate-bits', 'insert-hadamard']" in capsys.readouterr().err


def test_pipelines_of_reads_names_texts_and_ab_lists():
    """--pipeline 'speed|speed-fused' times two pipelines in one run: names resolve to their texts, other entries are
    taken as pipeline texts, and the sensitivity file joins each allocate-bits."""
    got = gpu_decode.pipelines_of("speed | speed-fused|canonicalize,allocate-bits,quantize,lower", False, "s.json")
    assert [label for label, _, _ in got] == ["speed", "speed-fused", "pipeline 3"]
    names = [[n for n, _ in parse_pipeline(text)] for _, text, _ in got]
    assert names[1] == names[0] + ["fuse-residual", "fuse-norm"]
    assert all(dict(parse_pipeline(text))["allocate-bits"]["sensitivity_file"] == "s.json" for _, text, _ in got)
    assert all(env == {} for _, _, env in got)
    assert gpu_decode.pipelines_of("default") == [("default", "default", {})]
    lm = dict(parse_pipeline(gpu_decode.pipelines_of("speed", quantize_lm_head=True)[0][1]))
    assert lm["quantize"]["skip"] == "" and lm["allocate-bits"]["skip"] == ""


def test_pipeline_entries_carry_environment_settings(monkeypatch):
    """'speed-fused@QCOMP_PDL=2' A/Bs a runtime setting: the entry keeps its pipeline, names the setting in its label,
    and gpu_decode.environment sets it for the entry's block only."""
    (a, ta, ea), (b, tb, eb) = gpu_decode.pipelines_of("speed-fused|speed-fused @ QCOMP_PDL=2 @ X_Y=a=b")
    assert ta == tb == gpu_decode.PIPELINES["speed-fused"]
    assert (a, ea) == ("speed-fused", {})
    assert (b, eb) == ("speed-fused@QCOMP_PDL=2@X_Y=a=b", {"QCOMP_PDL": "2", "X_Y": "a=b"})
    monkeypatch.setenv("QCOMP_PDL", "1")
    monkeypatch.delenv("X_Y", raising=False)
    with gpu_decode.environment(eb):
        assert os.environ["QCOMP_PDL"] == "2" and os.environ["X_Y"] == "a=b"
    assert os.environ["QCOMP_PDL"] == "1" and "X_Y" not in os.environ
    with pytest.raises(ValueError, match="'@QCOMP_PDL' is not VAR=VALUE"):
        gpu_decode.pipelines_of("speed@QCOMP_PDL")


def test_bad_pipeline_setting_stops_before_any_work(capsys):
    with pytest.raises(SystemExit):
        gpu_decode.main(["--pipeline", "speed@=2"])
    assert "is not VAR=VALUE" in capsys.readouterr().err


def test_inductor_deterministic_needs_torch_compile(capsys):
    import torch._inductor.config as inductor_config

    assert hasattr(inductor_config, "deterministic")  # the setting the flag turns on exists in this torch
    with pytest.raises(SystemExit):
        gpu_decode.main(["--inductor-deterministic"])
    assert "--inductor-deterministic needs --torch-compile" in capsys.readouterr().err


def test_allocation_histogram_counts_layers_by_bits():
    rep = {"allocation": {"layers": [{"code_bits": 3, "bits": 3.125}, {"code_bits": 4, "bits": 4.125},
                                     {"code_bits": 3, "bits": 3.125}, {"code_bits": 16, "bits": 16.0}]}}
    assert gpu_decode.allocation_histogram(rep) == {3: 2, 4: 1, 16: 1}
    assert gpu_decode.allocation_histogram({}) == {}  # a pipeline without allocate-bits
