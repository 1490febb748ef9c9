"""Resolve a model reference from the command line into (model, example_inputs).

    builtin:tiny-llama         a built-in model (qcomp.models.tiny)
    path/to/hf_dir             a Hugging Face directory with config.json (+ safetensors or a .gguf file)
    package.module:factory     a function returning a model or (model, example_inputs)
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from .tiny import builtin_model


class ModelRefError(ValueError):
    pass


def load_hf(path: Path, dtype=torch.float32):
    try:
        import transformers
    except ImportError:
        raise ModelRefError("loading a Hugging Face directory needs transformers: pip install 'qcomp[hf]'") from None
    cfg_file = path / "config.json"
    ggufs = sorted(path.glob("*.gguf"))
    kw = {"dtype": dtype}
    if ggufs and not (path / "model.safetensors").exists():
        kw["gguf_file"] = ggufs[0].name
    elif not cfg_file.exists():
        raise ModelRefError(f"{path} has no config.json: not a Hugging Face model directory")
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    archs = cfg.get("architectures") or []
    if archs:
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    else:  # no architectures recorded (e.g. configs converted from GGUF): decoder-only model types are causal LMs
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        causal = "gguf_file" in kw or (cfg.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                                       and not cfg.get("is_encoder_decoder") and cfg.get("model_type") != "bert")
    cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    return cls.from_pretrained(str(path), **kw).eval()


def load_model_ref(ref: str):
    """(model, example_inputs or None) for a builtin name, an HF directory or module:factory."""
    if ref.startswith("builtin:"):
        return builtin_model(ref.split(":", 1)[1])
    p = Path(ref)
    if p.is_dir():
        return load_hf(p), None
    if ":" in ref:
        mod, _, fn = ref.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise ModelRefError(f"cannot import {ref!r}: {e}") from None
        made = factory()
        return made if isinstance(made, tuple) else (made, None)
    raise ModelRefError(f"model {ref!r} is neither builtin:NAME, a directory nor module:factory")
