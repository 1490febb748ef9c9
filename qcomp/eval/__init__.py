"""Accuracy evaluation of float and compiled models: perplexity, KL to float, embedding cosine.

    from qcomp.eval import lm_windows, evaluate_lm, encoder_sentences, evaluate_encoder
    windows = lm_windows(tokenizer, "wikitext2_test.txt", n_windows=20, seq_len=1024)
    ref = evaluate_lm(float_model, windows, keep_logits=True)
    q = evaluate_lm(compiled, windows, reference=ref)   # q.ppl, q.kl

Every function takes "a model" as any callable: a Hugging Face module, a `qcomp.CompiledModel`, a
`qcomp.generate.Generator`, or a function of token ids (see `qcomp.eval.adapters`). CLI: `python -m qcomp.eval`.
"""
from .adapters import encoder_hidden, lm_logits
from .data import encoder_sentences, lm_windows, read_text
from .encoder import EncoderResult, evaluate_encoder, mean_pooled_embeddings
from .lm import LMResult, evaluate_lm
from .loading import load_causal_lm, load_encoder, load_tokenizer

__all__ = ["EncoderResult", "LMResult", "encoder_hidden", "encoder_sentences", "evaluate_encoder", "evaluate_lm",
           "lm_logits", "lm_windows", "load_causal_lm", "load_encoder", "load_tokenizer", "mean_pooled_embeddings",
           "read_text"]
