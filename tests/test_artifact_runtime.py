"""The executor runtime (runtime/executor.py): runtime choice, CPU fallback, the kernel-op argument
mapping (checked against the reference through the codegen op's own CPU path), dynamic shapes, dtypes,
and the CUDA-graph cache logic (with a stand-in graph recorder, since CI has no GPU)."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

import qcomp
from qcomp import QcompWarning
from qcomp.models.tiny import builtin_model
from qcomp.pass_manager import PassError
from qcomp.runtime.executor import Executor, _clone_outputs, make_runtime
from qcomp.runtime.reference import ReferenceRuntime


@pytest.fixture(scope="module")
def llama():
    model, (ids,) = builtin_model("tiny-llama")
    return qcomp.compile(model, budget=4, example_inputs=(ids,)), ids


def compile_mlp(pipeline=None):
    model, (x,) = builtin_model("tiny-mlp")
    try:
        return qcomp.compile(model, budget=4, example_inputs=(x,), pipeline=pipeline), x
    except PassError as e:
        if isinstance(e.cause, NotImplementedError):
            pytest.skip(f"pipeline {pipeline!r} needs an unimplemented part: {e.cause}")
        raise


def test_runtime_choice(llama):
    compiled, _ = llama
    g = compiled.graph
    assert isinstance(make_runtime(g, device="cuda"), Executor)  # construction does not touch the GPU
    assert type(make_runtime(g, device="cpu")) is ReferenceRuntime
    assert isinstance(make_runtime(g, runtime="executor"), Executor)
    assert type(make_runtime(g, runtime="reference", device="cuda")) is ReferenceRuntime
    want = Executor if torch.cuda.is_available() else ReferenceRuntime
    assert type(qcomp.CompiledModel(g)._runtime) is want
    with pytest.raises(ValueError, match="runtime must be one of"):
        make_runtime(g, runtime="fast")
    with pytest.raises(ValueError, match="need runtime='executor'"):
        make_runtime(g, runtime="reference", dtype=torch.float16)


def test_cpu_falls_back_to_reference_and_says_so_once(llama):
    compiled, ids = llama
    ex = Executor(compiled.graph)
    with pytest.warns(QcompWarning, match="inputs are on cpu, the qlinear kernels need CUDA"):
        y = ex.run(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y2 = ex.run(ids)
    assert torch.equal(y, compiled(ids)) and torch.equal(y2, y)
    assert ex.fallbacks == {"inputs are on cpu, the qlinear kernels need CUDA"}


def test_kernel_unavailable_reasons(llama, monkeypatch):
    ex = Executor(llama[0].graph)
    assert "need CUDA" in ex.kernel_unavailable(torch.zeros(2, device="meta"))
    cuda32 = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)
    assert "compiled.to(dtype=torch.float16)" in ex.kernel_unavailable(cuda32)
    cuda16 = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float16)
    ex._op = lambda *a, **k: None  # as if codegen.ops imported
    assert ex.kernel_unavailable(cuda16) is None
    ex._op = False  # as if triton were missing
    assert "cannot be imported" in ex.kernel_unavailable(cuda16)


@pytest.mark.parametrize("pipeline", [None, 'canonicalize,quantize(grid="uniform_asym")', "canonicalize,quantize(group_size=-1)",
                                      'canonicalize,quantize(grid="normal", p=2, group_size=64)'])
def test_kernel_path_matches_reference(pipeline, monkeypatch):
    """Force the kernel branch on CPU: the codegen op runs its CPU reference, so this checks that the
    executor passes spec/n/k/rotate through correctly for each grid."""
    compiled, x = compile_mlp(pipeline)
    ex = Executor(compiled.graph)
    calls = []
    real = ex._kernel_op()

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(ex, "kernel_unavailable", lambda x: None)
    monkeypatch.setattr(ex, "_kernel_op", lambda: spy)
    got = ex.run(x)
    assert len(calls) == len(compiled.graph.find("qlinear")) == 3
    spec = compiled.graph.find("qlinear")[0].attrs["spec"]
    assert calls[0]["grid"] == spec["grid"] and calls[0]["bits"] == spec["bits"] and calls[0]["n"] == 256
    torch.testing.assert_close(got, compiled(x), rtol=1e-5, atol=1e-5)
    ex2 = Executor(compiled.graph)  # the device-agnostic fallback used for float32 activations on CUDA
    monkeypatch.setattr(ex2, "qlinear", ex2.device_reference_qlinear)
    torch.testing.assert_close(ex2.run(x), compiled(x), rtol=1e-5, atol=1e-5)


def test_dynamic_batch_and_sequence(llama):
    compiled, _ = llama
    ex = Executor(compiled.graph)
    ref = ReferenceRuntime(compiled.graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QcompWarning)
        for shape in [(1, 1), (1, 5), (3, 23), (2, 16)]:
            ids = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(sum(shape)))
            y = ex.run(ids)
            assert y.shape == (*shape, 256) and torch.equal(y, ref.run(ids))


def test_to_dtype_keeps_quantized_storage(llama):
    compiled, ids = llama
    want = compiled(ids)
    model = qcomp.CompiledModel(compiled.graph, compiled.config, compiled.report, runtime="reference")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QcompWarning)
        model.to(dtype=torch.bfloat16)
        assert isinstance(model._runtime, Executor)
        y = model(ids)
    assert y.dtype == torch.bfloat16
    assert (y.float() - want).norm() / want.norm() < 0.05
    rt = model._runtime
    assert rt.param("layers.0.mlp.up_proj.qweight").dtype == torch.int32
    assert rt.param("layers.0.mlp.up_proj.scales").dtype == torch.float16
    floats = [t for t, v in compiled.graph.params.items() if v.is_floating_point() and t not in rt._quant_targets]
    assert floats and all(rt.param(t).dtype == torch.bfloat16 for t in floats)
    with pytest.raises(ValueError, match="floating dtype"):
        rt.to(dtype=torch.int8)
    model.to(dtype=torch.float32)
    assert torch.equal(model(ids), want)


def test_cuda_graph_cache_logic(llama, monkeypatch):
    """First call per signature eager, second records, later calls replay; outputs are copies."""
    compiled, ids = llama
    ex = Executor(compiled.graph, cuda_graphs=True, max_graphs=1)
    assert not ex.can_capture((ids,))  # CPU inputs never capture
    recorded = []

    class FakeGraph:
        def __init__(self, static_in, static_out):
            self.static_in, self.static_out = static_in, static_out

        def replay(self):
            self.static_out.copy_(ReferenceRuntime.run(ex, *self.static_in))

    def fake_record(inputs):
        static_in = tuple(x.clone() for x in inputs)
        out = ReferenceRuntime.run(ex, *static_in)
        recorded.append(ex.signature(inputs))
        return static_in, FakeGraph(static_in, out), out

    monkeypatch.setattr(ex, "can_capture", lambda inputs: True)
    monkeypatch.setattr(ex, "_record", fake_record)
    other = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QcompWarning)
        outs = [ex.run(x) for x in (ids, ids, ids, other, other, other)]
    assert recorded == [ex.signature((ids,))]  # max_graphs=1: the second signature stays eager
    assert torch.equal(outs[2], compiled(ids)) and torch.equal(outs[5], compiled(other))
    outs[2].zero_()
    assert torch.equal(ex.run(ids), compiled(ids))  # a returned output never aliases the static buffer
    ex.to(dtype=torch.float32)
    assert not ex._graphs  # moving invalidates recorded graphs


def test_clone_outputs_copies_nested_containers():
    t = torch.ones(2)
    out = _clone_outputs({"logits": t, "rest": (t, [t], 3)})
    assert out["logits"] is not t and out["rest"][1][0] is not t and out["rest"][2] == 3
    assert torch.equal(out["rest"][0], t)
