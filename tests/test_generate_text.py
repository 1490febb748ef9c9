"""qcomp.generate at the tokenizer level, on the real SmolLM2-135M (opt-in: QCOMP_MODELS_DIR=.models; minutes on CPU)."""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("transformers")


@pytest.mark.slow
@pytest.mark.skipif(not (os.environ.get("QCOMP_MODELS") or os.environ.get("QCOMP_MODELS_DIR")),
                    reason="slow real-model test (minutes on 2 CPU cores): set QCOMP_MODELS_DIR=.models to run")
def test_smollm2_float_step_graph_greedy_equals_hf(smollm2_dir):
    from qcomp.eval import load_causal_lm, load_tokenizer
    from qcomp.generate import compile_for_generation

    model, tok = load_causal_lm(smollm2_dir), load_tokenizer(smollm2_dir)
    gen = compile_for_generation(model, budget=16, pipeline="canonicalize")
    text, n = gen.generate_text(tok, "The capital of France is", max_new_tokens=6)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert text == "The capital of France is" + tok.decode(want[0, ids.shape[1]:], skip_special_tokens=True)
    assert n == 6
