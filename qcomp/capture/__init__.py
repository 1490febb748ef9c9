"""Model capture: nn.Module + example inputs -> QIR graph (fx first, torch.export where fx fails)."""
from __future__ import annotations

import inspect
import traceback

import torch
from torch import nn

from ..qir import Graph
from .convert import CaptureError
from .export_capture import capture_export
from .fx_capture import capture_fx

__all__ = ["CaptureError", "capture_model", "default_example_inputs", "is_hf_model"]


def is_hf_model(model: nn.Module) -> bool:
    return any(c.__module__.startswith("transformers.") and c.__name__ == "PreTrainedModel" for c in type(model).__mro__)


def default_example_inputs(model: nn.Module) -> tuple[tuple, dict]:
    """Example inputs for models whose input kind is known (HF text models: token ids of shape [2, 16])."""
    if is_hf_model(model):
        vocab = int(getattr(model.config, "vocab_size", 1000))
        ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
        return (ids.to(next(model.parameters()).device),), {}
    raise CaptureError(
        f"{type(model).__name__}: pass example_inputs=(tensor, ...) so qcomp can trace the model "
        "(only Hugging Face transformers models have a default)"
    )


def _hf_kwargs(model: nn.Module, kwargs: dict) -> dict:
    kwargs = dict(kwargs)
    params = inspect.signature(model.forward).parameters
    if "use_cache" in params:
        kwargs.setdefault("use_cache", False)
    return kwargs


def _short(e: BaseException) -> str:
    msg = str(e).strip().split("\n")
    return f"{type(e).__name__}: {msg[0][:300]}"


def capture_model(model: nn.Module, example_inputs: tuple | None = None, example_kwargs: dict | None = None,
                  method: str = "auto") -> Graph:
    """Capture `model` into QIR. method: 'auto' (fx, then export), 'fx' or 'export'."""
    if method not in ("auto", "fx", "export"):
        raise ValueError(f"capture method must be 'auto', 'fx' or 'export', got {method!r}")
    if example_inputs is None:
        example_inputs, example_kwargs = default_example_inputs(model)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    kwargs = dict(example_kwargs or {})
    hf = is_hf_model(model)
    if hf:
        kwargs = _hf_kwargs(model, kwargs)
    errors = []
    if method in ("auto", "fx") and not hf and not kwargs:
        try:
            return capture_fx(model, example_inputs)
        except CaptureError as e:
            errors.append(f"torch.fx: {e}")
        except Exception as e:  # fx raises many kinds (TraceError, TypeError on proxies, ...)
            errors.append(f"torch.fx: {_short(e)} (at {_fx_location(e)})")
        if method == "fx":
            raise CaptureError(f"{type(model).__name__} could not be captured. " + "; ".join(errors) +
                               ". Try method='export'.")
    try:
        return capture_export(model, example_inputs, kwargs)
    except CaptureError as e:
        errors.append(f"torch.export: {e}")
    except Exception as e:
        errors.append(f"torch.export: {_short(e)}")
    raise CaptureError(
        f"{type(model).__name__} could not be captured. " + "; ".join(errors) +
        ". What to try: make data-dependent Python control flow tensor-free, pass example_inputs that exercise "
        "the path you deploy, or wrap the offending submodule so it is a leaf."
    )


def _fx_location(e: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "torch/" not in f.filename]
    if not frames:
        return "unknown location"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}"
