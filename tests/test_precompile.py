"""codegen.precompile: recording a graph's kernel calls (on the CPU, kernels forced) and the compile jobs of
their tuning candidates. The process-pool compile itself needs CUDA (benchmarks run it on the GPU)."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import qcomp  # noqa: E402
from qcomp.codegen import precompile as pc  # noqa: E402
from qcomp.codegen import tune  # noqa: E402
from qcomp.codegen.kernel_spec import KernelSpec  # noqa: E402
from qcomp.runtime.executor import Executor  # noqa: E402
from qcomp.runtime.reference import ReferenceRuntime  # noqa: E402
from qcomp.static_decode import StaticDecodeStep  # noqa: E402

PIPELINE = ('canonicalize,fuse-cache-attention,insert-hadamard(max_block=32),fuse-hadamard(residual=False),'
            'allocate-bits(family="uniform", group_sizes=[32], bits=[2,3,4,8]),quantize(gptq=False),lower')


def test_recording_collects_every_kernel_call_and_returns_the_reference(monkeypatch):
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    step = StaticDecodeStep(transformers.LlamaForCausalLM(cfg).eval(), max_len=16).eval()
    kc, vc = step.new_cache(2)
    inp = (torch.randint(0, 96, (2, 1)), torch.tensor([5]), kc.normal_(), vc.normal_())
    g = qcomp.compile(step, budget=3.5, example_inputs=inp, pipeline=PIPELINE, calibration=[inp], cache_dir=False).graph
    monkeypatch.setenv("QCOMP_FORCE_TRITON", "1")
    ex = Executor(g, dtype=torch.float16)
    monkeypatch.setattr(ex, "kernel_unavailable", lambda x: None)  # the kernel path, on the CPU
    with pc.recording() as calls:
        got = ReferenceRuntime.run(ex, *inp)
    qls = g.find("qlinear")
    assert len(calls) == len(qls)
    assert {(c.n, c.k) for c in calls} == {(q.attrs["n"], q.attrs["k"]) for q in qls}
    assert all(c.m == 2 and c.x_dtype == "float16" and c.base.act_dtype == "fp16" for c in calls)
    assert any(c.base.had_block == 32 for c in calls) and pc.recorder() is None
    want = Executor(g, dtype=torch.float16).run(*inp)  # the reference path (CPU): the same values
    assert float((got[0].float() - want[0].float()).norm() / want[0].float().norm()) < 1e-2
    jobs = pc.jobs_for(calls, torch.device("cuda"))
    want_jobs = {(s.to_json(), sp > 1, c.m, c.n, c.k) for c in calls
                 for s, sp in tune.candidates(c.base, c.m, c.n, c.k, torch.device("cuda"))}
    assert {(j[0], j[1] > 1, j[2], j[3], j[4]) for j in jobs} == want_jobs
    assert len(jobs) == len(set(jobs))


def test_precompile_of_nothing_is_a_no_op():
    assert pc.precompile([], "cuda") == {"jobs": 0, "compiled": 0, "workers": 0, "seconds": 0.0}


def test_time_specs_compiles_its_cases_in_a_pool(monkeypatch, tmp_path):
    """benchmarks/time_specs.py --workers N hands each distinct (spec, split, shape) of its cases to compile_in_pool
    as compile_jobs takes them (bf16 specs with bf16 activations) before it times anything."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import time_specs

    seen = {}

    def fake_pool(jobs, workers):
        seen.update(jobs=jobs, workers=workers)
        raise SystemExit("stop before the GPU")

    monkeypatch.setattr(pc, "compile_in_pool", fake_pool)
    w4 = {"bits": 4, "variant": "gemv", "block_m": 1, "block_n": 64, "block_k": 128, "num_warps": 2}
    bf = {**w4, "act_dtype": "bf16"}
    cases = [[w4, 8, 256, 1024, 1], [w4, 8, 256, 1024, 1], [bf, 4, 128, 512, 2]]
    with pytest.raises(SystemExit, match="stop before the GPU"):
        time_specs.main([json.dumps(cases), "--out", str(tmp_path), "--workers", "3"])
    assert seen["workers"] == 3
    assert seen["jobs"] == [pc.job(KernelSpec(**w4), 8, 1, 256, 1024, "float16"),
                            pc.job(KernelSpec(**bf), 4, 2, 128, 512, "bfloat16")]
