"""Tensor files: parameters to and from safetensors (no pickle), written atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_params(params: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Save tensors (shared storage de-duplicated by cloning) atomically to a safetensors file."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sorted(params.items())}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_params(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))
