"""Load a Hugging Face model directory as a causal LM or an encoder, and its tokenizer."""
from __future__ import annotations

from pathlib import Path

import torch


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("qcomp.eval needs transformers for Hugging Face models: pip install 'qcomp[hf]'") from None
    return transformers


def _check_dir(path) -> Path:
    p = Path(path)
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{p} is not a Hugging Face model directory (no config.json); "
                                "prepare models with `python -m qcomp.models.prepare --out .models`")
    return p


def load_causal_lm(path, dtype=torch.float32):
    """AutoModelForCausalLM from `path` in eval mode (works also when config.json lists no architectures)."""
    return _transformers().AutoModelForCausalLM.from_pretrained(str(_check_dir(path)), dtype=dtype).eval()


def load_encoder(path, dtype=torch.float32):
    """AutoModel (e.g. BertModel) from `path` in eval mode."""
    return _transformers().AutoModel.from_pretrained(str(_check_dir(path)), dtype=dtype).eval()


def load_tokenizer(path):
    return _transformers().AutoTokenizer.from_pretrained(str(_check_dir(path)))


def example_ids(model, batch: int = 2, seq: int = 16, seed: int = 0) -> torch.Tensor:
    """Deterministic random token ids [batch, seq] for capturing a Hugging Face text model."""
    vocab = int(model.config.vocab_size)
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def compile_hf(model, budget: float, pipeline: str | None = None, **kwargs):
    """`qcomp.compile` of a Hugging Face text model with explicit example token ids (passes such as
    allocate-bits draw their data-free inputs in the examples' shape)."""
    import qcomp

    if pipeline:
        kwargs["pipeline"] = pipeline
    return qcomp.compile(model, budget=budget, example_inputs=(example_ids(model),), **kwargs)
