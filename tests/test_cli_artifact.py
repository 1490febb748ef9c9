"""CLI: compile --out, inspect (artifact and dump directory), run (input file, --prompt), --json, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import qcomp
from qcomp.cli import main
from qcomp.cli.cmd_run import ByteTokenizer, flatten_outputs, generate, logits_of, match_inputs


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    assert main(["compile", "builtin:tiny-llama", "--out", str(d / "a"), "--dump-dir", str(d / "dump"), "--json",
                 "--pipeline", "canonicalize,quantize"]) == 0  # pinned: the tests check its exact decisions
    return d


def test_inspect_artifact_table(art, capsys):
    assert main(["inspect", str(art / "a")]) == 0
    out = capsys.readouterr().out
    assert "integrity ok" in out and "layers.0.self_attn.q_proj" in out and "uniform-w3-g128" in out
    assert "14 quantized layers, 294,912 weights, average 3.125 bits/weight" in out
    assert "float linear layers: lm_head" in out


def test_inspect_json_artifact_and_dump(art, capsys):
    assert main(["inspect", str(art / "a"), "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert a["kind"] == "artifact" and a["average_bits"] == 3.125 and len(a["layers"]) == 15
    assert a["layers"][0]["rel_mse"] > 0 and a["size_bytes"] > a["files"]["weights.safetensors"]
    assert main(["inspect", str(art / "dump"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "dump" and d["ir_file"] == "02_quantize.qir" and d["average_bits"] == 3.125
    assert [p["name"] for p in d["passes"]] == ["canonicalize", "quantize"]
    assert [r["layer"] for r in d["layers"]] == [r["layer"] for r in a["layers"]]


def test_inspect_errors(art, tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 1
    assert "neither a qcomp artifact" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in (art / "a").iterdir():
        (bad / f.name).write_bytes(f.read_bytes()[:-1] if f.name == "graph.qir" else f.read_bytes())
    assert main(["inspect", str(bad)]) == 1
    assert "graph.qir is truncated" in capsys.readouterr().err


def test_run_input_file(art, tmp_path, capsys):
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(0))
    save_file({"input_ids": ids}, str(tmp_path / "in.safetensors"))
    out = tmp_path / "out.safetensors"
    assert main(["run", str(art / "a"), str(tmp_path / "in.safetensors"), "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["outputs"]["output"]["shape"] == [1, 9, 256]
    want = qcomp.load(art / "a")(ids)
    assert torch.equal(load_file(str(out))["output"], want)
    save_file({"0": ids}, str(tmp_path / "pos.safetensors"))  # positional keys work too
    assert main(["run", str(art / "a"), str(tmp_path / "pos.safetensors")]) == 0
    assert "output: float32[1, 9, 256]" in capsys.readouterr().out


def test_run_input_file_errors(art, tmp_path, capsys):
    save_file({"tokens": torch.zeros(1, 3, dtype=torch.long)}, str(tmp_path / "in.safetensors"))
    assert main(["run", str(art / "a"), str(tmp_path / "in.safetensors")]) == 1
    assert "no tensor for input 0 'input_ids'" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    assert main(["run", str(art / "a"), str(tmp_path / "junk.safetensors")]) == 1
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert main(["run", str(art / "a")]) == 1
    assert "exactly one of" in capsys.readouterr().err


def test_run_prompt_bytes_tokenizer(art, capsys):
    assert main(["run", str(art / "a"), "--prompt", "Hi", "--tokenizer", "bytes", "--max-new-tokens", "5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["prompt_ids"] == [72, 105] and len(r["generated_ids"]) == 5
    model = qcomp.load(art / "a")
    assert generate(model, [72, 105], 5)[2:] == r["generated_ids"]  # greedy = argmax of the last position


def test_run_prompt_needs_a_tokenizer(art, capsys):
    assert main(["run", str(art / "a"), "--prompt", "Hi"]) == 1
    assert "holds no tokenizer" in capsys.readouterr().err


def test_run_prompt_rejects_non_lm(tmp_path, capsys):
    assert main(["compile", "builtin:tiny-mlp", "--out", str(tmp_path / "m"), "--json"]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "m"), "--prompt", "Hi", "--tokenizer", "bytes"]) == 1
    err = capsys.readouterr().err
    assert "needs a causal LM whose only input is token ids, or a decoder step" in err and "takes x: f32" in err


def test_generate_stops_at_eos():
    calls = []

    def fake_lm(ids):
        calls.append(ids.shape[1])
        logits = torch.zeros(1, ids.shape[1], 10)
        logits[0, -1, 7 if ids.shape[1] < 4 else 2] = 1.0
        return {"logits": logits}

    assert generate(fake_lm, [1, 2], 10, eos=2) == [1, 2, 7, 7, 2]
    assert calls == [2, 3, 4]


def test_helpers():
    assert ByteTokenizer().decode(ByteTokenizer().encode("héllo")) == "héllo"
    t = torch.ones(1)
    assert list(flatten_outputs({"logits": t, "past": (t, t)})) == ["logits", "past.0", "past.1"]
    assert list(flatten_outputs((t, t))) == ["output_0", "output_1"]
    spec = [{"index": 0, "name": "x", "type": "f32[4]"}, {"index": 1, "name": "y", "type": "f32[4]"}]
    x, y = match_inputs({"y": t * 2, "input_0": t}, spec)
    assert torch.equal(x, t) and torch.equal(y, t * 2)
    with pytest.raises(ValueError, match="needs a causal LM returning logits.*last_hidden_state"):
        logits_of({"last_hidden_state": torch.zeros(1, 2, 3)})
    assert logits_of((torch.zeros(1, 2, 5),)).shape == (1, 2, 5)


def test_console_script_and_module_entry_point(art, tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "qcomp", "inspect", str(art / "a"), "--json"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["integrity"] == "ok"
    exe = os.path.join(os.path.dirname(sys.executable), "qcomp")
    if not os.path.exists(exe):
        pytest.skip("the qcomp console script is not installed next to this Python (pip install -e .)")
    r = subprocess.run([exe, "run", str(art / "a"), "--prompt", "ab", "--tokenizer", "bytes", "--max-new-tokens", "2"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ab"), r.stderr


@pytest.mark.parametrize("static", [False, True])
def test_generation_artifact_decodes_through_the_kv_cache(tmp_path, capsys, static):
    """compile --generation saves the decoder step; run --prompt then decodes through its KV cache (static cache
    with --max-len). At budget 16 (everything kept float) the ids equal Hugging Face's own greedy generate."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(cfg).eval()
    lm.save_pretrained(tmp_path / "hf")
    extra = ["--max-len", "16"] if static else []
    assert main(["compile", str(tmp_path / "hf"), "--generation", *extra, "--budget", "16", "--pipeline",
                 "canonicalize,quantize", "--out", str(tmp_path / "a"), "--json"]) == 0
    capsys.readouterr()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["generation"]["kind"] == ("static" if static else "dynamic")
    assert main(["run", str(tmp_path / "a"), "--prompt", "Hi!", "--tokenizer", "bytes", "--max-new-tokens", "6",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    ids = torch.tensor([list(b"Hi!")])
    want = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)[0, 3:].tolist()
    assert r["generated_ids"] == want
    # sampling: seeded, and top-k 1 is greedy
    args = ["run", str(tmp_path / "a"), "--prompt", "Hi!", "--tokenizer", "bytes", "--max-new-tokens", "6", "--json",
            "--sample", "--temperature", "1.3", "--top-k", "1", "--seed", "3"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["generated_ids"] == want
    assert main(["run", str(tmp_path / "a"), "--prompt", "Hi!", "--tokenizer", "bytes", "--sample",
                 "--temperature", "0"]) == 1
    assert "--temperature must be > 0" in capsys.readouterr().err
    if static:  # the static cache holds 16 positions: 3 + 20 - 1 do not fit
        assert main(["run", str(tmp_path / "a"), "--prompt", "Hi!", "--tokenizer", "bytes", "--max-new-tokens",
                     "20"]) == 1
        assert "compile with a larger max_len" in capsys.readouterr().err


def test_generation_flags_need_generation(capsys):
    assert main(["compile", "builtin:tiny-llama", "--max-len", "16"]) == 1
    assert "add --generation" in capsys.readouterr().err
