"""Shared fixtures: real model directories and data (skipped cleanly when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Generated Triton kernels run under the interpreter on machines without a GPU (CI).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from qcomp.codegen.ops import launch as ops_launch  # noqa: E402  (forced_kernel_error puts guarded_launch in its place)

REPO = Path(__file__).resolve().parents[1]


def models_dir() -> Path:
    return Path(os.environ.get("QCOMP_MODELS_DIR", REPO / ".models"))


def data_dir() -> Path:
    return Path(os.environ.get("QCOMP_DATA_DIR", REPO.parent / "shared" / "data"))


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (run: python -m qcomp.models.prepare --out .models)")
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return _need(models_dir() / "smollm2-135m" / "config.json", "SmolLM2-135M").parent


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return _need(models_dir() / "minilm-l6-v2" / "config.json", "all-MiniLM-L6-v2").parent


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(data_dir(), "shared data folder")


def assert_golden(text: str, name: str) -> None:
    """Compare with tests/golden/NAME; QCOMP_UPDATE_GOLDEN=1 rewrites the file instead."""
    path = REPO / "tests" / "golden" / name
    if os.environ.get("QCOMP_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"golden file {path} missing: run with QCOMP_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"output differs from golden {path} (QCOMP_UPDATE_GOLDEN=1 to accept)"


@pytest.fixture
def one_thread():
    """Tiny matmuls on a shared 2-core machine are far faster single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_decode():
    """A two-layer Llama decode step (qcomp.static_decode) in bf16, the kernels' activation dtype, and one token's
    inputs (id, position 5, caches of 12 positions filled with random values)."""
    transformers = pytest.importorskip("transformers")
    from qcomp.static_decode import StaticDecodeStep

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    step = StaticDecodeStep(transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval(), max_len=12).eval()
    kc, vc = step.new_cache(1)
    kc.normal_()
    vc.normal_()
    return step, (torch.randint(0, 96, (1, 1)), torch.tensor([5]), kc, vc)


def fresh_token(inputs: tuple, seed: int) -> tuple:
    """tiny_decode's inputs with another random token id (the same position and caches)."""
    ids = torch.randint(0, 96, (1, 1), generator=torch.Generator().manual_seed(seed))
    return (ids, *inputs[1:])


def forced_kernel_error(gm, x: tuple, monkeypatch) -> float:
    """||a - b|| / ||b|| of gm(*x)[0] run with the generated kernels forced (QCOMP_FORCE_TRITON, CPU interpreter), a,
    against the same module on the reference path, b; a must be finite (every output written, no read past an
    input: each qlinear kernel's inputs sit inside NaN poison, guarded_launch)."""
    import qcomp.codegen.ops as ops

    monkeypatch.delenv("QCOMP_FORCE_TRITON", raising=False)
    with torch.no_grad():
        ref = gm(*x)[0]
        monkeypatch.setenv("QCOMP_FORCE_TRITON", "1")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setattr(ops, "launch", guarded_launch)
        got = gm(*x)[0]
    assert torch.isfinite(got).all()
    return float((got.float() - ref.float()).norm() / ref.float().norm())


GUARD = 4096  # elements of poison on each side of a guarded tensor


def guarded(t):
    """A copy of t (same shape and strides) in the middle of a larger buffer whose other elements are poison (NaN
    for floats, all bits set for integers): a kernel reading past either end of t then reads NaN into its result
    instead of whatever memory lies there (a read that is right only while that memory happens to be finite).
    None stays None."""
    if t is None:
        return None
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) if t.numel() else 0
    buf = torch.full((span + 2 * GUARD,), float("nan") if t.is_floating_point() else -1, dtype=t.dtype,
                     device=t.device)
    view = buf[GUARD:].as_strided(t.shape, t.stride())
    view.copy_(t)
    return view


def guarded_launch(spec, split, *args, out=None, norm=None, residual=None, **kw):
    """qcomp.codegen.ops.launch with every input tensor inside poison (guarded): a kernel's read past the end of its
    activations, scales, offsets, bias, table, signs, norm weight or residual shows as NaN in its output."""
    args = [guarded(a) if isinstance(a, torch.Tensor) else a for a in args]
    norm = (guarded(norm[0]), norm[1]) if norm is not None else None
    return ops_launch(spec, split, *args, out=out, norm=norm, residual=guarded(residual), **kw)


# the passes before the fusion passes that run after lower (fuse-glu, fuse-residual, fuse-norm) in their tests
FUSION_BASE = ("canonicalize,insert-hadamard(max_block=128),fuse-hadamard(residual=False),"
               "allocate-bits(tie_siblings=True),quantize,fuse-siblings,lower")


def compile_quietly(model, inputs, pipeline, capture="fx"):
    """qcomp.compile at budget 3.5, calibrated on `inputs`, its warnings silenced."""
    import warnings

    import qcomp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qcomp.compile(model, budget=3.5, example_inputs=inputs, pipeline=pipeline, capture=capture,
                             calibration=[inputs])


def pass_stats(compiled, name: str) -> dict:
    """The stats pass `name` reported when `compiled` was compiled."""
    return next(p["stats"] for p in compiled.report["passes"] if p["name"] == name)
