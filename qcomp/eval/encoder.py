"""Encoder evaluation: cosine similarity of sentence embeddings to a reference (float) model.

Embedding = mean of the last hidden states over the sentence's tokens, L2-normalized (the
sentence-transformers recipe of all-MiniLM-L6-v2). Padding: a compiled BertModel graph is captured
with input_ids only (every token attended), so padded batches would pool over, and attend to, pad
tokens. We never pad: sentences are tokenized one by one (with [CLS]/[SEP]) and grouped into batches of
identical token length, so the attention mask is all ones and mean pooling over all tokens is exact.
Results are returned in the sentences' order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .adapters import encoder_hidden


@dataclass
class EncoderResult:
    mean_cosine: float
    min_cosine: float
    n_sentences: int
    cosines: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def row(self) -> dict:
        return {"mean_cosine": self.mean_cosine, "min_cosine": self.min_cosine, "n_sentences": self.n_sentences,
                "seconds": self.seconds}


def tokenize_unpadded(tokenizer, sentences: list[str], max_length: int = 128) -> list[torch.Tensor]:
    return [tokenizer(s, truncation=True, max_length=max_length, return_tensors="pt").input_ids[0] for s in sentences]


def mean_pooled_embeddings(model, token_lists: list[torch.Tensor], batch_size: int = 32) -> torch.Tensor:
    """L2-normalized mean-pooled embeddings [N, H], batching only sequences of equal length (no padding)."""
    by_len: dict[int, list[int]] = {}
    for i, t in enumerate(token_lists):
        by_len.setdefault(int(t.numel()), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(token_lists)
    for idx in by_len.values():
        for j in range(0, len(idx), batch_size):
            chunk = idx[j:j + batch_size]
            ids = torch.stack([token_lists[i] for i in chunk]).to(torch.int64)
            h = encoder_hidden(model, ids).float()
            emb = F.normalize(h.mean(dim=1), dim=-1).cpu()
            for k, i in enumerate(chunk):
                out[i] = emb[k]
    return torch.stack(out)


def evaluate_encoder(model, token_lists: list[torch.Tensor], reference: torch.Tensor, batch_size: int = 32) -> EncoderResult:
    """Cosine of `model`'s embeddings to `reference` embeddings [N, H] (from mean_pooled_embeddings of the float model)."""
    if reference.shape[0] != len(token_lists):
        raise ValueError(f"reference has {reference.shape[0]} embeddings for {len(token_lists)} sentences")
    t0 = time.perf_counter()
    emb = mean_pooled_embeddings(model, token_lists, batch_size)
    cos = (emb * reference).sum(-1)  # both L2-normalized
    return EncoderResult(mean_cosine=float(cos.mean()), min_cosine=float(cos.min()), n_sentences=len(token_lists),
                         cosines=cos.tolist(), seconds=time.perf_counter() - t0)
