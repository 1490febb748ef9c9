"""One calling convention for every kind of model the evaluators accept.

* `lm_logits(model, ids)` -> logits [B, T, V] for token ids [B, T]
* `encoder_hidden(model, ids)` -> last hidden states [B, T, H]

A model may be a Hugging Face module (called with `use_cache=False`, no attention mask: the inputs
are unpadded), a `qcomp.CompiledModel` (called with the ids as its one positional input, the way
`qcomp.compile` captured HF models), a `qcomp.generate.Generator` (its compiled decoder step, run
on an empty KV cache), or any callable of ids returning a tensor, a dict/ModelOutput, or a tuple whose
first element is the tensor.
"""
from __future__ import annotations

import torch
from torch import nn


def _pick(out, keys: tuple[str, ...], what: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        for k in keys:
            if k in out:
                return out[k]
        raise TypeError(f"model output has no {what} (looked for {', '.join(keys)}; keys: {list(out.keys())})")
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find {what} in a model output of type {type(out).__name__}")


def _is_hf(model) -> bool:
    return isinstance(model, nn.Module) and hasattr(model, "config") and type(model).__module__.startswith("transformers.")


def _call(model, ids: torch.Tensor):
    if hasattr(model, "full_forward"):  # qcomp.generate.Generator: the compiled step graph with an empty cache
        return model.full_forward(ids)
    with torch.no_grad():
        if _is_hf(model):
            kw = {"use_cache": False} if getattr(model.config, "is_decoder", False) or hasattr(model, "generate") else {}
            return model(input_ids=ids, **kw)
        return model(ids)


def lm_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] of `model` on token ids [B, T]."""
    logits = _pick(_call(model, ids), ("logits",), "logits")
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
        raise ValueError(f"expected logits of shape [B, T, V] = [{ids.shape[0]}, {ids.shape[1]}, V], got {tuple(logits.shape)}")
    return logits


def encoder_hidden(model, ids: torch.Tensor) -> torch.Tensor:
    """Last hidden states [B, T, H] of an encoder on token ids [B, T] (all tokens attended)."""
    h = _pick(_call(model, ids), ("last_hidden_state",), "last_hidden_state")
    if h.dim() != 3 or tuple(h.shape[:2]) != tuple(ids.shape):
        raise ValueError(f"expected hidden states of shape [{ids.shape[0]}, {ids.shape[1]}, H], got {tuple(h.shape)}")
    return h
