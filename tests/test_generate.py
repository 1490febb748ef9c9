"""qcomp.generate: the compiled decoder step with a KV cache, against full re-runs and HF's own generate."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from qcomp.generate import DecoderStep, GenerationError, compile_for_generation  # noqa: E402

RTN = "canonicalize,quantize"


@pytest.fixture(scope="module")
def tiny_lm():
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def gen16(tiny_lm):
    return compile_for_generation(tiny_lm, budget=16, pipeline=RTN)  # quantize keeps everything float at 16


@pytest.fixture(scope="module")
def gen4(tiny_lm):
    return compile_for_generation(tiny_lm, budget=4.0, pipeline=RTN)


def prompts(n=2, t=5, seed=0):
    return torch.randint(1, 96, (n, t), generator=torch.Generator().manual_seed(seed))


def greedy_by_full_rerun(gen, ids, n):
    for _ in range(n):
        ids = torch.cat([ids, gen.full_forward(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_layer_names_are_the_hf_module_names(tiny_lm, gen4):
    hf = {n for n, m in tiny_lm.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"}
    q = {n.attrs["layer"] for n in gen4.compiled.graph.nodes if n.op == "qlinear"}
    assert q == hf  # every decoder linear is quantized, under its Hugging Face name


def test_budget16_greedy_equals_hf_generate(tiny_lm, gen16):
    p = prompts()
    want = tiny_lm.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=10, do_sample=False)
    assert torch.equal(gen16.generate(p, 10), want)


def test_cached_greedy_equals_full_rerun_on_quantized_graph(gen4):
    p = prompts(seed=1)
    assert torch.equal(gen4.generate(p, 10), greedy_by_full_rerun(gen4, p, 10))


def test_generation_runs_the_quantized_graph_not_the_float_model(tiny_lm, gen4, gen16):
    ids = prompts(1, 8, seed=2)
    with torch.no_grad():
        ref = tiny_lm(input_ids=ids, use_cache=False).logits
    assert torch.allclose(gen16.full_forward(ids), ref, atol=1e-4)
    err = (gen4.full_forward(ids) - ref).abs().max()
    assert err > 1e-3, "budget-4 logits equal the float model's: generation is not running the quantized graph"


def test_sampling_is_seeded_and_top_k_1_is_greedy(gen4):
    p = prompts(seed=3)
    a = gen4.generate(p, 6, do_sample=True, temperature=1.5, top_k=20, seed=7)
    assert torch.equal(a, gen4.generate(p, 6, do_sample=True, temperature=1.5, top_k=20, seed=7))
    assert a.shape == (2, 11) and int(a.min()) >= 0 and int(a.max()) < 96
    assert torch.equal(gen4.generate(p, 6, do_sample=True, top_k=1, seed=0), gen4.generate(p, 6))


def test_stops_at_eos_and_pads_finished_rows(gen4):
    p = prompts(1, 5, seed=4)
    greedy = gen4.generate(p, 8)
    eos = int(greedy[0, 5 + 2])  # the third new token
    first = int((greedy[0, 5:] == eos).nonzero()[0])
    out = gen4.generate(p, 8, eos_token_id=eos)
    assert out.shape[1] == 5 + first + 1 and int(out[0, -1]) == eos
    both = gen4.generate(torch.cat([p, prompts(1, 5, seed=5)]), 8, eos_token_id=eos)
    row = both[0, 5:]
    assert (row[first:] == eos).all()  # a finished row keeps emitting EOS while the other one runs


def test_bad_arguments(gen4, tiny_lm):
    with pytest.raises(ValueError, match="integer token ids"):
        gen4.generate(torch.rand(1, 3), 2)
    with pytest.raises(ValueError, match="temperature"):
        gen4.generate(prompts(), 2, do_sample=True, temperature=0)
    with pytest.raises(TypeError, match="causal LM"):
        compile_for_generation(torch.nn.Linear(2, 2))
    with pytest.raises(GenerationError):
        DecoderStep(tiny_lm.model)  # a base model has no output head


# -- static cache (StaticDecodeStep): fixed shapes, one token per step ---------------------------------------
@pytest.fixture(scope="module")
def static16(tiny_lm):
    return compile_for_generation(tiny_lm, budget=16, pipeline=RTN, max_len=24, batch=2)


@pytest.fixture(scope="module")
def static4(tiny_lm):
    return compile_for_generation(tiny_lm, budget=4.0, pipeline=RTN, max_len=24, batch=2)


def test_static_budget16_greedy_equals_hf_generate(tiny_lm, static16):
    from qcomp.generate import StaticGenerator

    assert isinstance(static16, StaticGenerator) and static16.cache_shape == (2, 2, 2, 24, 16)
    p = prompts()
    want = tiny_lm.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=10, do_sample=False)
    assert torch.equal(static16.generate(p, 10), want)


def test_static_runs_the_quantized_graph(tiny_lm, static4, gen4):
    assert {n.attrs["layer"] for n in static4.compiled.graph.nodes if n.op == "qlinear"} == \
        {n for n, m in tiny_lm.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"}
    p = prompts(seed=6)
    with torch.no_grad():
        ref = tiny_lm(input_ids=p, use_cache=False).logits[:, -1]
    got = static4._start(p)  # logits after the prompt, fed one token at a time through the static cache
    assert (got - ref).abs().max() > 1e-3  # the quantized graph, not the float model
    assert (got - ref).abs().max() < 0.5 * ref.abs().max()  # but close to it at 4 bits


def test_static_sampling_eos_and_limits(static4):
    p = prompts(seed=3)
    a = static4.generate(p, 6, do_sample=True, temperature=1.5, top_k=20, seed=7)
    assert torch.equal(a, static4.generate(p, 6, do_sample=True, temperature=1.5, top_k=20, seed=7))
    assert torch.equal(static4.generate(p, 6, do_sample=True, top_k=1, seed=0), static4.generate(p, 6))
    greedy = static4.generate(p, 8)
    eos = int(greedy[0, 5 + 1])
    out = static4.generate(p, 8, eos_token_id=eos)
    assert int(out[0, -1]) == eos or (out[0, 5:] == eos).any()
    assert static4.generate(p, 24 - 5 + 1).shape == (2, 25)  # exactly fills the cache: 5 + 20 - 1 = 24 positions
    with pytest.raises(ValueError, match="cache positions"):
        static4.generate(p, 24 - 5 + 2)
    with pytest.raises(ValueError, match="compiled for batch 2"):
        static4.generate(prompts(1), 2)


def test_static_refuses_other_architectures_with_the_fix(tiny_lm):
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    gpt2 = transformers.GPT2LMHeadModel(cfg).eval()
    with pytest.raises(GenerationError, match="without max_len"):
        compile_for_generation(gpt2, budget=4.0, pipeline=RTN, max_len=16)
    with pytest.raises(ValueError, match="max_len"):
        compile_for_generation(tiny_lm, budget=4.0, pipeline=RTN, max_len=1)


def test_static_step_with_data_free_allocation(tiny_lm):
    """The default pipeline measures sensitivity on random inputs: token ids are drawn for the ids input only, the
    cache position keeps its example value (a random position past max_len made index_copy fail)."""
    from qcomp.allocation.sensitivity import random_inputs, token_inputs

    g = compile_for_generation(tiny_lm, budget=4.0, max_len=16)
    assert 3.5 < g.compiled.report["allocation"]["avg_bits"] <= 4.0
    assert token_inputs(g.compiled.graph) == {0}
    ex = (torch.zeros(1, 1, dtype=torch.long), torch.tensor([5]), torch.zeros(2, 1, 2, 16, 16), torch.zeros(2, 1, 2, 16, 16))
    for batch in random_inputs(g.compiled.graph, ex, 3):
        assert int(batch[1]) == 5 and batch[0].shape == (1, 1)
    out = g.generate(prompts(1), 6)
    assert out.shape == (1, 11)
