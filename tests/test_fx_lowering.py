"""runtime.fx_lowering: a lowered QIR graph as an fx GraphModule computes what the runtimes compute, and
torch.compile traces it in one graph (the qlinear op opaque)."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import qcomp  # noqa: E402
from qcomp.runtime.fx_lowering import to_graph_module  # noqa: E402
from qcomp.runtime.reference import ReferenceRuntime  # noqa: E402
from qcomp.static_decode import StaticDecodeStep  # noqa: E402

PIPELINE = ('canonicalize,fuse-cache-attention,insert-hadamard(max_block=32),fuse-hadamard(residual=False),'
            'allocate-bits(family="uniform", group_sizes=[32], bits=[2,3,4,8]),quantize(gptq=False),lower')


@pytest.fixture(scope="module")
def compiled_step():
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    step = StaticDecodeStep(transformers.LlamaForCausalLM(cfg).eval(), max_len=16).eval()
    inp = step_inputs(step, seed=0)
    return qcomp.compile(step, budget=3.5, example_inputs=inp, pipeline=PIPELINE, calibration=[inp],
                         cache_dir=False), step


def step_inputs(step, seed, batch=2):
    g = torch.Generator().manual_seed(seed)
    kc, vc = step.new_cache(batch)
    return (torch.randint(0, 96, (batch, 1), generator=g), torch.tensor([5]),
            torch.randn(kc.shape, generator=g), torch.randn(vc.shape, generator=g))


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_graph_module_matches_the_reference_runtime(compiled_step):
    compiled, step = compiled_step
    g = compiled.graph
    assert any((q.attrs.get("rotate") or {}).get("size") for q in g.find("qlinear")), "no fused rotation to lower"
    assert all(n.attrs["target"] == "qcomp.cached_attention.default" for n in g.find("attention"))
    gm = to_graph_module(g)
    assert sum(1 for n in gm.graph.nodes if n.target.__class__.__name__ == "function"
               and n.target.__name__ == "qlinear_call") == len(g.find("qlinear"))
    inp = step_inputs(step, seed=1)  # fresh inputs, not the capture's
    want = ReferenceRuntime(g).run(*inp)
    got = gm(*inp)
    for a, b in zip(got, want):
        assert a.shape == b.shape and rel(a, b) < 1e-4


def test_torch_compile_traces_one_graph(compiled_step):
    compiled, step = compiled_step
    gm = to_graph_module(compiled.graph)
    inp = step_inputs(step, seed=2)
    want = gm(*inp)
    torch._dynamo.reset()
    got = torch.compile(gm, backend="aot_eager", fullgraph=True)(*inp)
    for a, b in zip(got, want):
        assert rel(a, b) < 1e-5


def test_unknown_op_is_named(compiled_step):
    import copy

    g = copy.deepcopy(compiled_step[0].graph)
    node = next(n for n in g.nodes if n.op == "norm")
    node.op = "frobnicate"
    with pytest.raises(ValueError, match=f"%{node.name} has op 'frobnicate'"):
        to_graph_module(g)


def test_compiled_model_graph_module(compiled_step):
    compiled, step = compiled_step
    inp = step_inputs(step, seed=4)
    gm = compiled.graph_module()
    for a, b in zip(gm(*inp), compiled(*inp)):
        assert rel(a, b) < 1e-4


def test_compiled_model_torch_compile_matches_graph_module(compiled_step):
    """compiled.torch_compile(): inductor (with its PDL and combo settings, which change launches, not results on
    CPU) computes what the graph module computes, on fresh inputs."""
    compiled, step = compiled_step
    inp = step_inputs(step, seed=6)
    want = compiled.graph_module()(*inp)
    torch._dynamo.reset()
    got = compiled.torch_compile(fullgraph=True)(*inp)
    for a, b in zip(got, want):
        assert a.shape == b.shape and rel(a, b) < 1e-4


def test_torch_compile_refuses_options_it_cannot_pass(compiled_step):
    from qcomp.runtime.torch_compile import inductor_options

    compiled, _ = compiled_step
    assert inductor_options(pdl=True, combo=False) == {"triton.enable_pdl": True}
    assert inductor_options(pdl=False, combo=False) == {}
    with pytest.raises(ValueError, match="pass pdl=False, combo=False .* backend other than inductor"):
        compiled.torch_compile(backend="aot_eager")
    with pytest.raises(ValueError, match="a mode or options, not both"):
        compiled.torch_compile(mode="max-autotune")
    torch._dynamo.reset()
    compiled.torch_compile(backend="aot_eager", pdl=False, combo=False)  # accepted: no inductor options
    compiled.torch_compile(backend="aot_eager", pdl=False, combo=False, options=None)


def test_graph_module_dtype_casts_as_the_executor_does(compiled_step):
    """dtype=torch.bfloat16 on a float32 graph: floating inputs and parameters cast, packed weights / scales / tables
    kept, and the outputs equal the Executor's with the same dtype (both run the op's reference path on the CPU)."""
    from qcomp.runtime.executor import Executor
    from qcomp.runtime.fx_lowering import _attr_name, quantized_param_targets

    compiled, step = compiled_step
    g = compiled.graph
    inp = step_inputs(step, seed=7)
    gm = compiled.graph_module(dtype=torch.bfloat16)
    kept = quantized_param_targets(g)
    buffers = dict(gm.named_buffers())

    def buffer_dtype(target):  # the module's buffer of a param target (its name as the lowering gives it)
        return buffers[_attr_name(target, set())].dtype

    assert kept and all(buffer_dtype(t) == g.params[t].dtype for t in kept), \
        "packed weights, scales and tables keep their storage dtypes"
    cast = [t for t in g.params if t not in kept and g.params[t].dtype == torch.float32]
    assert cast and all(buffer_dtype(t) == torch.bfloat16 for t in cast)
    ex = Executor(g, dtype=torch.bfloat16)
    with pytest.warns(Warning):  # the executor says once that the kernels need CUDA
        want = ex.run(*inp)
    got = gm(*inp)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == torch.bfloat16 and a.shape == b.shape
        assert rel(a, b) < 1e-2
    torch._dynamo.reset()
    for a, b in zip(compiled.torch_compile(dtype=torch.bfloat16)(*inp), got):  # inductor over the cast graph
        assert a.dtype == torch.bfloat16 and rel(a, b) < 2e-2
    f32 = compiled.graph_module()(*inp)
    assert f32[0].dtype == torch.float32 and rel(got[0], f32[0]) < 5e-2
    with pytest.raises(ValueError, match="floating torch dtype"):
        compiled.graph_module(dtype=torch.int8)
