"""Causal-LM evaluation: perplexity on token windows, and KL divergence to a reference model.

Perplexity = exp(mean next-token negative log-likelihood over every predicted position of every
window (seq_len - 1 per window)). KL = mean over every position of every window of
KL(p_reference || p_model) in nats, the reference being the float model. The reference's logits
are kept per window in float16 (`keep_logits=True`) so that each compiled model is compared
without re-running the float model; float16 keeps logit errors near 1e-3 relative, far below the
KL of any quantized model worth measuring.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .adapters import lm_logits


@dataclass
class LMResult:
    ppl: float
    nll: float  # mean negative log-likelihood (nats/token)
    n_tokens: int  # predicted tokens
    kl: float | None = None  # mean KL(reference || model), nats/token
    window_nll: list[float] = field(default_factory=list)
    seconds: float = 0.0
    logits: list[torch.Tensor] | None = None  # float16 logits per window (keep_logits=True)

    def row(self) -> dict:
        return {"ppl": self.ppl, "nll": self.nll, "kl": self.kl, "n_tokens": self.n_tokens, "seconds": self.seconds}


def _kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p) per position, summed over the vocabulary."""
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)
    logp = F.log_softmax(logits.float(), dim=-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


def evaluate_lm(model, windows: torch.Tensor, reference: LMResult | None = None, keep_logits: bool = False,
                progress=None) -> LMResult:
    """Perplexity of `model` (any callable, see qcomp.eval.adapters) on windows [N, T], one window at a time.

    reference: an LMResult computed with keep_logits=True (the float model) -> also the mean KL to it.
    progress: optional callable(i, n, partial_ppl) called after each window.
    """
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [N, T] with T >= 2, got {tuple(windows.shape)}")
    if reference is not None and (reference.logits is None or len(reference.logits) != windows.shape[0]):
        raise ValueError("reference must come from evaluate_lm(float_model, same windows, keep_logits=True)")
    t0 = time.perf_counter()
    nll_sum, n_tok, kl_sum, kl_n = 0.0, 0, 0.0, 0
    per_window, kept = [], []
    for i, w in enumerate(windows):
        ids = w.unsqueeze(0)
        logits = lm_logits(model, ids)[0]
        nll = F.cross_entropy(logits[:-1].float(), w[1:].to(logits.device), reduction="sum").item()
        if not math.isfinite(nll):
            raise FloatingPointError(f"window {i}: the model produced non-finite logits (NLL {nll})")
        nll_sum += nll
        n_tok += w.numel() - 1
        per_window.append(nll / (w.numel() - 1))
        if reference is not None:
            kl = _kl(reference.logits[i].to(logits.device), logits)
            kl_sum += kl.sum().item()
            kl_n += kl.numel()
        if keep_logits:
            kept.append(logits.detach().to("cpu", torch.float16))
        if progress is not None:
            progress(i + 1, windows.shape[0], math.exp(nll_sum / n_tok))
    nll_mean = nll_sum / n_tok
    return LMResult(ppl=math.exp(nll_mean), nll=nll_mean, n_tokens=n_tok, kl=kl_sum / kl_n if kl_n else None,
                    window_nll=per_window, seconds=time.perf_counter() - t0, logits=kept if keep_logits else None)
