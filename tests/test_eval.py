"""qcomp.eval: perplexity windows, perplexity/KL arithmetic, unpadded encoder embeddings, model adapters."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import qcomp
from qcomp.eval import (encoder_sentences, evaluate_encoder, evaluate_lm, lm_logits, lm_windows,
                        mean_pooled_embeddings)
from qcomp.eval.__main__ import model_kind

transformers = pytest.importorskip("transformers")


class CharTokenizer:
    """Token id = byte value, with a BOS (id 1) like Llama tokenizers."""

    def __call__(self, text, return_tensors=None, truncation=False, max_length=None):
        ids = [1] + list(text.encode())
        if truncation and max_length:
            ids = ids[:max_length]

        class Out:
            input_ids = torch.tensor([ids])
        return Out()


class FixedLogits:
    """A 'model' returning the same logits row at every position."""

    def __init__(self, row):
        self.row = torch.as_tensor(row, dtype=torch.float32)

    def __call__(self, ids):
        return self.row.expand(*ids.shape, -1).clone()


def test_windows_are_consecutive_non_overlapping_token_runs():
    text = "abcdefghij" * 10
    w = lm_windows(CharTokenizer(), text, n_windows=3, seq_len=16)
    stream = CharTokenizer()(text).input_ids[0]
    assert w.shape == (3, 16) and w.dtype == torch.int64
    assert torch.equal(w.flatten(), stream[:48])
    assert lm_windows(CharTokenizer(), text, None, 16).shape == (101 // 16, 16)
    with pytest.raises(ValueError, match="full windows"):
        lm_windows(CharTokenizer(), text, n_windows=7, seq_len=16)


def test_uniform_model_has_perplexity_vocab_size_and_kl_is_exact():
    windows = torch.randint(0, 8, (3, 10), generator=torch.Generator().manual_seed(0))
    uniform = evaluate_lm(FixedLogits(torch.zeros(8)), windows, keep_logits=True)
    assert uniform.ppl == pytest.approx(8.0, rel=1e-6) and uniform.n_tokens == 27
    assert evaluate_lm(FixedLogits(torch.zeros(8)), windows, reference=uniform).kl == pytest.approx(0.0, abs=1e-7)
    row = torch.tensor([2.0, 0, 0, 0, 0, 0, 0, -1])
    other = evaluate_lm(FixedLogits(row), windows, reference=uniform)
    logq = F.log_softmax(row, -1)
    assert other.kl == pytest.approx(float((-math.log(8) - logq).mean()), rel=1e-3)  # KL(uniform || q), fp16 ref
    nll = -logq[windows[:, 1:]].mean()
    assert other.ppl == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_reference_without_logits_is_refused():
    w = torch.zeros(2, 4, dtype=torch.int64)
    ref = evaluate_lm(FixedLogits(torch.zeros(3)), w)
    with pytest.raises(ValueError, match="keep_logits"):
        evaluate_lm(FixedLogits(torch.zeros(3)), w, reference=ref)


@pytest.fixture(scope="module")
def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_float_hf_model_and_compiled_model_through_one_function(tiny_llama):
    windows = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    ref = evaluate_lm(tiny_llama, windows, keep_logits=True)
    compiled = qcomp.compile(tiny_llama, budget=16, example_inputs=(windows[:, :8],), pipeline="canonicalize")
    same = evaluate_lm(compiled, windows, reference=ref)
    assert same.ppl == pytest.approx(ref.ppl, rel=1e-4) and same.kl < 1e-5
    q = qcomp.compile(tiny_llama, budget=3.0, example_inputs=(windows[:, :8],), pipeline="canonicalize,quantize")
    worse = evaluate_lm(q, windows, reference=ref)
    assert worse.kl > 1e-4 and worse.ppl != ref.ppl
    assert lm_logits(q, windows[:1]).shape == (1, 12, 64)


@pytest.fixture(scope="module")
def tiny_bert():
    cfg = transformers.BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def test_unpadded_grouping_equals_masked_mean_pooling_of_a_padded_batch(tiny_bert):
    toks = [torch.randint(5, 300, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 9, 5, 7, 9, 5)]
    ours = mean_pooled_embeddings(tiny_bert, toks, batch_size=2)
    t_max = max(t.numel() for t in toks)
    ids = torch.zeros(len(toks), t_max, dtype=torch.int64)
    mask = torch.zeros(len(toks), t_max, dtype=torch.int64)
    for i, t in enumerate(toks):
        ids[i, :t.numel()], mask[i, :t.numel()] = t, 1
    with torch.no_grad():
        h = tiny_bert(input_ids=ids, attention_mask=mask).last_hidden_state
    st = F.normalize((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)  # sentence-transformers recipe
    assert torch.allclose(ours, st, atol=1e-5)
    assert evaluate_encoder(tiny_bert, toks, ours).mean_cosine == pytest.approx(1.0, abs=1e-6)
    q = qcomp.compile(tiny_bert, budget=3.0, example_inputs=(ids[:2, :8],), pipeline="canonicalize,quantize")
    r = evaluate_encoder(q, toks, ours)
    assert 0.0 < r.min_cosine <= r.mean_cosine < 1.0 - 1e-6 and len(r.cosines) == 6


def test_encoder_sentences_skip_headings_and_short_fragments():
    text = " = Title = \n\n A short one . This sentence has exactly seven words here . \n Another line that is long enough to keep"
    assert encoder_sentences(text, n=10) == ["This sentence has exactly seven words here .",
                                             "Another line that is long enough to keep ."]
    with pytest.raises(ValueError, match="no sentences"):
        encoder_sentences(" = Only a heading = \n")


def test_model_kind_from_config(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    assert model_kind(tmp_path) == "encoder"
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert model_kind(tmp_path) == "lm"
