"""Fuzzing artifacts: seeded random byte flips, truncations, insertions and deletions in the three files.

Raw mutations: every load either raises ArtifactError or succeeds with bitwise identical outputs.
Mutations followed by a re-hash of the manifest (a consistent but tampered artifact) get past the hash
check, so they exercise the QIR parser, the safetensors reader and the verifier: each load either
succeeds or raises ArtifactError — never another exception from deep inside torch or the parsers.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import qcomp
from qcomp import artifact
from qcomp.artifact import ArtifactError
from qcomp.models.tiny import builtin_model

FILES = ("manifest.json", "graph.qir", "weights.safetensors")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    model, (x,) = builtin_model("tiny-mlp")
    compiled = qcomp.compile(model, budget=4, example_inputs=(x,))
    path = tmp_path_factory.mktemp("fuzz") / "base"
    compiled.save(path)
    return {name: (path / name).read_bytes() for name in FILES}, compiled(x), x


def mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(("flip", "flip", "truncate", "insert", "delete"))
    if not data:
        return b"\x00"
    i = rng.randrange(len(data))
    if kind == "flip":
        out = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 8))):
            j = rng.randrange(len(out))
            out[j] ^= rng.randrange(1, 256)
        return bytes(out)
    if kind == "truncate":
        return data[:i]
    if kind == "insert":
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9))) + data[i:]
    return data[:i] + data[i + rng.randrange(1, 9):]


def write(path: Path, files: dict[str, bytes]) -> None:
    """Write the files that differ from what `path` holds (fewer writes keep the test fast)."""
    path.mkdir(exist_ok=True)
    for name, data in files.items():
        f = path / name
        if not f.exists() or f.read_bytes() != data:
            f.write_bytes(data)


def rehash(files: dict[str, bytes]) -> dict[str, bytes]:
    try:
        m = json.loads(files["manifest.json"])
        for name in ("graph.qir", "weights.safetensors"):
            m["files"][name] = {"bytes": len(files[name]), "sha256": artifact.sha256_bytes(files[name])}
        return {**files, "manifest.json": artifact.manifest_bytes(m)}
    except (ValueError, KeyError, TypeError):
        return files  # a mangled manifest stays mangled


def test_fuzz_raw_mutations_never_give_a_wrong_model(base, tmp_path):
    originals, want, x = base
    rng = random.Random(1234)
    outcomes = {"error": 0, "ok": 0}
    for i in range(1200):
        name = FILES[i % 3]
        files = {**originals, name: mutate(originals[name], rng)}
        write(tmp_path / "a", files)
        try:
            got = qcomp.load(tmp_path / "a")(x)
        except ArtifactError:
            outcomes["error"] += 1
        else:
            outcomes["ok"] += 1
            assert torch.equal(got, want), f"mutation {i} of {name} loaded with different outputs"
    assert outcomes["error"] + outcomes["ok"] == 1200 and outcomes["error"] > 1000, outcomes


def test_fuzz_consistent_tampering_only_raises_artifact_error(base, tmp_path):
    originals, _, _ = base
    rng = random.Random(99)
    loaded = 0
    for i in range(600):
        name = ("graph.qir", "weights.safetensors")[i % 2]
        files = rehash({**originals, name: mutate(originals[name], rng)})
        write(tmp_path / "a", files)
        try:
            qcomp.load(tmp_path / "a")
        except ArtifactError as e:
            assert str(e), "an ArtifactError must say what is wrong"
        else:
            loaded += 1
    assert loaded < 600  # most structural damage is caught; value-only changes legitimately load
