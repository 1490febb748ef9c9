"""Artifacts: save/load round trips, byte-identical output, and every kind of bad input -> ArtifactError."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import qcomp
from qcomp import artifact
from qcomp.artifact import ArtifactError
from qcomp.models.tiny import builtin_model

PIPELINE = "canonicalize,quantize"  # pinned where tests check exact layer decisions; other tests use the default


@pytest.fixture(scope="module")
def tiny_llama():
    model, (ids,) = builtin_model("tiny-llama")
    return qcomp.compile(model, budget=4, example_inputs=(ids,), pipeline=PIPELINE), ids


@pytest.fixture(scope="module")
def mlp():
    model, (x,) = builtin_model("tiny-mlp")
    return qcomp.compile(model, budget=4, example_inputs=(x,), pipeline=PIPELINE), x


def rehash(path: Path) -> None:
    """Update the manifest's hashes after a deliberate edit (simulates a consistent but tampered artifact)."""
    m = json.loads((path / artifact.MANIFEST).read_text())
    for name, entry in m["files"].items():
        data = (path / name).read_bytes()
        entry.update(sha256=artifact.sha256_bytes(data), bytes=len(data))
    (path / artifact.MANIFEST).write_bytes(artifact.manifest_bytes(m))


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_round_trip_same_outputs_and_report(tiny_llama, tmp_path):
    compiled, ids = tiny_llama
    compiled.save(tmp_path / "a")
    assert sorted(files_of(tmp_path / "a")) == ["graph.qir", "manifest.json", "weights.safetensors"]
    loaded = qcomp.load(tmp_path / "a")
    assert torch.equal(loaded(ids), compiled(ids))
    other = torch.randint(0, 256, (3, 9), generator=torch.Generator().manual_seed(5))
    assert torch.equal(loaded(other), compiled(other))  # dynamic batch and sequence length survive the round trip
    assert loaded.graph.structurally_equal(compiled.graph)
    assert loaded.layer_table() == compiled.layer_table()
    assert loaded.summary() == compiled.summary()
    assert loaded.config == compiled.config


def test_manifest_contents(tiny_llama, tmp_path):
    compiled, _ = tiny_llama
    compiled.save(tmp_path / "a")
    m = artifact.read_manifest(tmp_path / "a")
    assert m["format"] == "qcomp-artifact" and m["format_version"] == artifact.FORMAT_VERSION
    assert m["qcomp_version"] == qcomp.__version__ and m["torch_version"] == torch.__version__.split("+")[0]
    assert m["pipeline"] == compiled.report["pipeline"] and m["config"]["budget"] == 4.0
    assert [r["layer"] for r in m["layers"]] == [r["layer"] for r in compiled.layer_table()]
    assert m["kept_float"] == ["lm_head"]
    assert all("seconds" not in p for p in m["passes"]) and [p["name"] for p in m["passes"]] == ["canonicalize", "quantize"]
    for name, entry in m["files"].items():
        data = (tmp_path / "a" / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": artifact.sha256_bytes(data)}
    assert m["graph"]["inputs"] == [{"index": 0, "name": "input_ids", "type": "i64[2, 16]"}]


def test_no_pickle_in_artifact(tiny_llama, tmp_path):
    compiled, _ = tiny_llama
    compiled.save(tmp_path / "a")
    for name, data in files_of(tmp_path / "a").items():
        assert not data.startswith(b"\x80\x02") and b"PK\x03\x04" not in data[:4], name  # pickle / torch.save zip
    json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert set(load_file(str(tmp_path / "a" / "weights.safetensors"))) == set(compiled.graph.params)


def test_byte_identical_for_same_inputs_and_seed(tmp_path):
    """Two compiles with the default pipeline (bit allocation included) give the same bytes."""
    outs = []
    for i in range(2):
        model, (x,) = builtin_model("tiny-llama")
        compiled = qcomp.compile(model, budget=3.5, example_inputs=(x,))
        compiled.save(tmp_path / f"a{i}")
        outs.append(files_of(tmp_path / f"a{i}"))
    assert outs[0] == outs[1]
    assert torch.equal(qcomp.load(tmp_path / "a0")(x), compiled(x))


def test_resave_of_loaded_artifact_is_identical(tiny_llama, tmp_path):
    compiled, _ = tiny_llama
    compiled.save(tmp_path / "a")
    qcomp.load(tmp_path / "a").save(tmp_path / "b")
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")


def test_tied_parameters_are_stored_once(tmp_path):
    model, (ids,) = builtin_model("tiny-llama")
    model.lm_head.weight = model.embed_tokens.weight  # tie, as many HF LMs do
    compiled = qcomp.compile(model, budget=4, example_inputs=(ids,), pipeline=PIPELINE)  # rotations untie them
    compiled.save(tmp_path / "a")
    m = artifact.read_manifest(tmp_path / "a")
    stored = load_file(str(tmp_path / "a" / "weights.safetensors"))
    assert m["aliases"] == {"lm_head.weight": "embed_tokens.weight"} and "lm_head.weight" not in stored
    loaded = qcomp.load(tmp_path / "a")
    assert loaded.graph.params["lm_head.weight"] is loaded.graph.params["embed_tokens.weight"]
    assert torch.equal(loaded(ids), compiled(ids))


def test_save_replaces_an_artifact_but_not_other_directories(mlp, tmp_path):
    compiled, x = mlp
    compiled.save(tmp_path / "a")
    compiled.save(tmp_path / "a")  # replacing an artifact is fine
    assert torch.equal(qcomp.load(tmp_path / "a")(x), compiled(x))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not a qcomp artifact; refusing"):
        compiled.save(other)
    assert (other / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directories left behind


def test_save_is_atomic_when_writing_fails(mlp, tmp_path, monkeypatch):
    compiled, x = mlp
    compiled.save(tmp_path / "a")
    before = files_of(tmp_path / "a")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(artifact.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        compiled.save(tmp_path / "a")
    monkeypatch.undo()
    assert files_of(tmp_path / "a") == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_tokenizer_directory_is_saved_and_hashed(mlp, tmp_path):
    compiled, _ = mlp
    tok = tmp_path / "hf"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"version": "1.0"}')
    (tok / "model.safetensors").write_bytes(b"weights are not copied")
    compiled.save(tmp_path / "a", tokenizer=tok)
    assert artifact.tokenizer_dir(tmp_path / "a") is not None
    assert sorted(artifact.read_manifest(tmp_path / "a")["files"]) == ["graph.qir", "tokenizer/tokenizer.json", "weights.safetensors"]
    (tmp_path / "a" / "tokenizer" / "tokenizer.json").write_text('{"version": "2.0"}')
    with pytest.raises(ArtifactError, match="tokenizer.json is corrupt or was modified"):
        qcomp.load(tmp_path / "a")
    with pytest.raises(ArtifactError, match="no tokenizer files"):
        compiled.save(tmp_path / "b", tokenizer=tmp_path / "a")


# -- bad input: each gives ArtifactError with a message naming the problem -------------------------

@pytest.fixture
def saved(mlp, tmp_path):
    compiled, x = mlp
    compiled.save(tmp_path / "a")
    return tmp_path / "a"


def test_truncated_weights(saved):
    data = (saved / "weights.safetensors").read_bytes()
    (saved / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="weights.safetensors is truncated"):
        qcomp.load(saved)


def test_truncated_manifest(saved):
    data = (saved / "manifest.json").read_bytes()
    (saved / "manifest.json").write_bytes(data[:100])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        qcomp.load(saved)


def test_flipped_bytes_in_weights(saved):
    data = bytearray((saved / "weights.safetensors").read_bytes())
    data[-10] ^= 0x40
    (saved / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.safetensors is corrupt or was modified"):
        qcomp.load(saved)


@pytest.mark.parametrize("name", ["graph.qir", "weights.safetensors", "manifest.json"])
def test_missing_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(ArtifactError, match=f"missing {name}|not a qcomp artifact"):
        qcomp.load(saved)


def test_newer_format_version(saved):
    m = json.loads((saved / "manifest.json").read_text())
    m["format_version"] = artifact.FORMAT_VERSION + 1
    (saved / "manifest.json").write_bytes(artifact.manifest_bytes(m))
    with pytest.raises(ArtifactError, match="newer qcomp.*upgrade qcomp"):
        qcomp.load(saved)


def test_format_version_1_is_refused(saved):
    """Version 1 did not record the packed-code layout: reading its qweights could misplace bits silently."""
    m = json.loads((saved / "manifest.json").read_text())
    m["format_version"] = 1
    del m["packing_version"]
    (saved / "manifest.json").write_bytes(artifact.manifest_bytes(m))
    with pytest.raises(ArtifactError, match="format version 1.*recompile the model"):
        qcomp.load(saved)


def test_other_packing_version_is_refused(saved):
    from qcomp.codegen.packing import PACKING_VERSION

    m = json.loads((saved / "manifest.json").read_text())
    assert m["packing_version"] == PACKING_VERSION
    m["packing_version"] = 2
    (saved / "manifest.json").write_bytes(artifact.manifest_bytes(m))
    with pytest.raises(ArtifactError, match="layout version 2.*recompile"):
        qcomp.load(saved)


@pytest.fixture(scope="module")
def mlp3():
    model, (x,) = builtin_model("tiny-mlp")
    return qcomp.compile(model, budget=3.25, example_inputs=(x,), pipeline=PIPELINE), x


@pytest.mark.parametrize("version", [3, 4])
def test_older_packing_artifact_is_converted_on_load(mlp3, tmp_path, version):
    """An artifact written before the row groups (packing v3) or before the 3-bit trio plane (v4) loads: its
    qweights are converted to the current layout and the model computes what it did."""
    from safetensors.torch import load as st_load, save as st_save

    from qcomp.codegen.packing import _group_rows, padded_codes, planes, unpack_codes
    from test_codegen_packing import pack_v3

    compiled, x = mlp3
    saved = tmp_path / "a"
    compiled.save(saved)
    weights = st_load((saved / "weights.safetensors").read_bytes())
    g = compiled.graph
    converted = set()
    for node in g.find("qlinear"):
        target = g.node(node.args[1]).attrs["target"]
        if target in weights:
            spec, n, k = node.attrs["spec"], node.attrs["n"], node.attrs["k"]
            bits, p = spec["bits"] * spec.get("p", 1), spec.get("p", 1)
            old = pack_v3(unpack_codes(weights[target], bits, n, k // p), bits)
            if version == 4:
                old = _group_rows(torch.nn.functional.pad(old, (0, 0, 0, -n % 16)), planes(bits, 4),
                                  padded_codes(k // p))
            weights[target] = old
            converted.add(bits)
    assert 3 in converted  # the layout that changed in v5
    (saved / "weights.safetensors").write_bytes(st_save(weights))
    m = json.loads((saved / "manifest.json").read_text())
    m["packing_version"] = version
    (saved / "manifest.json").write_bytes(artifact.manifest_bytes(m))
    rehash(saved)
    torch.testing.assert_close(qcomp.load(saved)(x), compiled(x))


def test_edited_manifest(saved):
    text = (saved / "manifest.json").read_text()
    (saved / "manifest.json").write_text(text.replace('"budget": 4.0', '"budget": 8.0'))
    with pytest.raises(ArtifactError, match="manifest.json was modified"):
        qcomp.load(saved)


def test_tampered_graph_without_rehash(saved):
    text = (saved / "graph.qir").read_text()
    (saved / "graph.qir").write_text(text.replace("n: 256, k: 64", "n: 128, k: 64"))
    with pytest.raises(ArtifactError, match="graph.qir is corrupt or was modified"):
        qcomp.load(saved)


def test_tampered_graph_shape_mismatch_fails_verify(saved):
    text = (saved / "graph.qir").read_text()
    assert "n: 256, k: 64" in text
    (saved / "graph.qir").write_text(text.replace("n: 256, k: 64", "n: 128, k: 64"))
    rehash(saved)  # hashes agree, so only the verifier can notice
    with pytest.raises(ArtifactError, match="(?s)does not verify.*packed codes have shape"):
        qcomp.load(saved)


def test_weights_with_a_different_shape_fail_verify(saved):
    params = load_file(str(saved / "weights.safetensors"))
    params["fc1.scales"] = torch.ones(256, 2, dtype=torch.float16)
    save_file(params, str(saved / "weights.safetensors"))
    rehash(saved)
    with pytest.raises(ArtifactError, match="(?s)does not verify.*fc1.scales"):
        qcomp.load(saved)


def test_graph_calling_disallowed_target(saved):
    text = (saved / "graph.qir").read_text()
    (saved / "graph.qir").write_text(text.replace('"torch.nn.functional.relu"', '"torch.load"'))
    rehash(saved)
    with pytest.raises(ArtifactError, match="torch.load"):
        qcomp.load(saved)


def test_manifest_with_path_traversal(saved):
    m = json.loads((saved / "manifest.json").read_text())
    m["files"]["../outside"] = {"bytes": 1, "sha256": "0" * 64}
    (saved / "manifest.json").write_bytes(artifact.manifest_bytes(m))
    with pytest.raises(ArtifactError, match="invalid file entry '../outside'"):
        qcomp.load(saved)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        qcomp.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="not a qcomp artifact"):
        qcomp.load(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(ArtifactError, match="not a qcomp artifact"):
        qcomp.load(tmp_path / "file.txt")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"name": "some other tool"}')
    with pytest.raises(ArtifactError, match="not a qcomp artifact manifest"):
        qcomp.load(tmp_path / "other")


# -- fresh process --------------------------------------------------------------------------------

LOAD_AND_RUN = """
import sys, qcomp
from safetensors.torch import load_file, save_file
from qcomp.cli.cmd_run import flatten_outputs
art, inp, out = sys.argv[1:4]
inputs = load_file(inp)
model = qcomp.load(art)
y = model(*[inputs[str(i)] for i in range(len(inputs))])
save_file({k: v.contiguous() for k, v in flatten_outputs(y).items()}, out)
"""


def load_in_fresh_process(art: Path, inputs: tuple, tmp: Path) -> dict[str, torch.Tensor]:
    """Load `art` and run it on `inputs` in a new Python process that imports only qcomp."""
    save_file({str(i): x.contiguous() for i, x in enumerate(inputs)}, str(tmp / "in.safetensors"))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(art), str(tmp / "in.safetensors"), str(tmp / "out.safetensors")],
                   check=True, cwd=tmp, env=env, timeout=600)
    return load_file(str(tmp / "out.safetensors"))


def assert_bitwise(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


def test_fresh_process_load_is_bitwise_identical(tiny_llama, tmp_path):
    from qcomp.cli.cmd_run import flatten_outputs

    compiled, ids = tiny_llama
    compiled.save(tmp_path / "a")
    assert_bitwise(load_in_fresh_process(tmp_path / "a", (ids,), tmp_path), flatten_outputs(compiled(ids)))
