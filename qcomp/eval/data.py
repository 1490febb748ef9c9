"""Evaluation data: perplexity windows and encoder sentences from a text file (e.g. wikitext-2 test).

Perplexity windows follow the standard protocol (GPTQ, HIGGS): tokenize the whole text once (the
tokenizer's default special tokens, e.g. a BOS for Llama tokenizers), cut the token stream into
consecutive non-overlapping windows of `seq_len` tokens, and keep the first `n_windows`.

Encoder sentences: the text's non-empty, non-heading lines split at " . " (wikitext is
space-tokenized), keeping sentences of at least `min_words` words, in file order.
"""
from __future__ import annotations

from pathlib import Path

import torch


def read_text(path) -> str:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"evaluation text {p} does not exist")
    return p.read_text(encoding="utf-8")


def lm_windows(tokenizer, text: str, n_windows: int | None = 20, seq_len: int = 1024) -> torch.Tensor:
    """Token windows [n_windows, seq_len] (int64) of `text` (use `read_text(path)`). None: every full window."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (one predicted token), got {seq_len}")
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    available = ids.numel() // seq_len
    n = available if n_windows is None else int(n_windows)
    if n < 1 or n > available:
        raise ValueError(f"asked for {n} windows of {seq_len} tokens, the text has {ids.numel()} tokens "
                         f"({available} full windows)")
    return ids[: n * seq_len].reshape(n, seq_len).to(torch.int64)


def encoder_sentences(text: str, n: int = 256, min_words: int = 6, max_words: int = 64) -> list[str]:
    """The first `n` sentences of `text` (see module docstring)."""
    out = []
    for line in text.split("\n"):
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for s in line.split(" . "):
            words = s.split()
            if min_words <= len(words) <= max_words:
                out.append(" ".join(words).rstrip(" .") + " .")
                if len(out) == n:
                    return out
    if not out:
        raise ValueError("no sentences found in the evaluation text")
    return out
