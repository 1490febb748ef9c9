"""Compiled-model artifacts: `save(compiled, path)` writes a directory, `load(path)` rebuilds the model.

Layout (format version 2; version 1 did not record the packed-code layout and is refused):

    path/
      manifest.json        format, format_version, packing_version (qcomp.codegen.packing's layout of the
                           qweight tensors), qcomp/torch versions, config, pipeline, per-layer
                           choices, pass log (no timings), graph inputs, aliases, sha256 + size of
                           every other file, and its own sha256 ("manifest_sha256")
      graph.qir            the QIR text form (qcomp.qir.print_graph)
      weights.safetensors  every parameter tensor of the graph: packed codes, scales, lookup tables,
                           float parameters (tensors that share storage are stored once, see aliases)
      tokenizer/...        optional: tokenizer files copied from a Hugging Face directory

Nothing is pickled and nothing in an artifact can name code outside torch math (graph targets resolve
through qcomp.qir.targets). `load` checks, in order: the manifest's format and version, its own hash
and canonical form, the size and sha256 of every file, then parses the graph, reads the tensors and runs
the verifier. Any failure raises `ArtifactError` naming the file and the fix.

Writes are atomic: the artifact is assembled in a temporary sibling directory and renamed into place.
The same compiled graph gives a byte-identical artifact: sorted keys, no timestamps, no absolute paths.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import torch

from qcomp.codegen.packing import PACKING_VERSION, READABLE_VERSIONS


FORMAT = "qcomp-artifact"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
GRAPH_FILE = "graph.qir"
WEIGHTS_FILE = "weights.safetensors"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja", "config.json")


class ArtifactError(ValueError):
    """A path that is not a readable, intact qcomp artifact of a supported format version."""


# -- writing --------------------------------------------------------------------------------------

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(manifest: dict) -> bytes:
    """The canonical bytes of a manifest, with "manifest_sha256" set to the hash of everything else."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    body["manifest_sha256"] = sha256_bytes(_canonical(body))
    return _canonical(body, indent=1) + b"\n"


def _canonical(obj, indent=None) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=True).encode()


def _jsonable(v):
    """A JSON-serializable copy of a report value (tuples -> lists, unknown objects -> str)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _dedupe_params(params: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each distinct tensor once: returns (tensors to store, alias name -> stored name)."""
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name in sorted(params):
        t = params[name].detach()
        key = (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        stored[name] = t.to("cpu").contiguous().clone()
    return stored, aliases


def _tokenizer_files(tokenizer) -> dict[str, bytes]:
    if tokenizer is None:
        return {}
    src = Path(tokenizer)
    if not src.is_dir():
        raise ArtifactError(f"tokenizer {str(src)!r} is not a directory; pass a Hugging Face model or tokenizer directory")
    files = {name: (src / name).read_bytes() for name in TOKENIZER_FILES if (src / name).is_file()}
    if not any(n.startswith("tokenizer") or n.startswith("vocab") for n in files):
        raise ArtifactError(f"{src} holds no tokenizer files (looked for {', '.join(TOKENIZER_FILES[:7])})")
    return files


def build_manifest(compiled, files: dict[str, bytes], aliases: dict[str, str]) -> dict:
    import qcomp

    report = compiled.report or {}
    g = compiled.graph
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "packing_version": PACKING_VERSION,
        "qcomp_version": qcomp.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "config": json.loads(compiled.config.to_json()),
        "pipeline": report.get("pipeline", compiled.config.pipeline),
        "layers": _jsonable(report.get("layers", [])),
        "kept_float": _jsonable(report.get("kept_float", [])),
        "passes": [_jsonable(_reproducible(p)) for p in report.get("passes", [])],
        "graph": {"name": g.name, "inputs": [_jsonable({"index": n.attrs["index"], "name": n.attrs.get("name", n.name),
                                                       "type": str(n.type)}) for n in g.inputs]},
        **({"generation": _jsonable(report["generation"])} if report.get("generation") else {}),
        "aliases": aliases,
        "files": {name: {"sha256": sha256_bytes(data), "bytes": len(data)} for name, data in sorted(files.items())},
    }


_VOLATILE = ("seconds", "cached")  # timings and cache hits differ between identical compiles


def _reproducible(record: dict) -> dict:
    """A pass record without timings or cache hits (at any depth), so equal compiles give equal manifests."""
    if isinstance(record, dict):
        return {k: _reproducible(v) for k, v in record.items() if not any(w in k for w in _VOLATILE)}
    return record


def save(compiled, path: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> Path:
    """Write `compiled` (a qcomp.CompiledModel) as an artifact directory at `path`; returns the path.

    tokenizer: an optional directory (e.g. the Hugging Face model directory) whose tokenizer files are
    copied into the artifact, so that `qcomp run --prompt` works from the artifact alone. An existing
    `path` is replaced only if it is an empty directory or a qcomp artifact.
    """
    from safetensors.torch import save as st_save

    from .qir import print_graph
    from .qir.verifier import verify

    path = Path(path)
    verify(compiled.graph)
    stored, aliases = _dedupe_params(compiled.graph.params)
    files = {GRAPH_FILE: print_graph(compiled.graph).encode(), WEIGHTS_FILE: st_save(stored)}
    files.update({f"{TOKENIZER_DIR}/{n}": data for n, data in _tokenizer_files(tokenizer).items()})
    manifest = build_manifest(compiled, files, aliases)
    files[MANIFEST] = manifest_bytes(manifest)
    _write_dir_atomic(path, files)
    return path


def _write_dir_atomic(path: Path, files: dict[str, bytes]) -> None:
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or (path / MANIFEST).is_file())):
        raise ArtifactError(f"{path} exists and is not a qcomp artifact; refusing to overwrite it (choose another --out)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    old = None
    try:
        for name, data in files.items():
            f = tmp / name
            f.parent.mkdir(parents=True, exist_ok=True)
            with open(f, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, old / "artifact")
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "artifact").exists() and not path.exists():
            os.replace(old / "artifact", path)  # put the previous artifact back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# -- reading --------------------------------------------------------------------------------------

def read_manifest(path: str | os.PathLike) -> dict:
    """The checked manifest of the artifact at `path` (format, version, own hash); files are not read."""
    path = Path(path)
    mfile = path / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    if not path.is_dir() or not mfile.is_file():
        raise ArtifactError(f"{path} is not a qcomp artifact (no {MANIFEST}); create one with "
                            f"`qcomp compile MODEL --out DIR` or compiled.save(DIR)")
    raw = mfile.read_bytes()
    try:
        m = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{mfile} is not valid JSON ({e}); the artifact is corrupt, save it again") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{mfile} is not a qcomp artifact manifest (format {m.get('format') if isinstance(m, dict) else None!r}, "
                            f"expected {FORMAT!r})")
    v = m.get("format_version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ArtifactError(f"{mfile}: format_version {v!r} is not a positive integer; the artifact is corrupt")
    if v > FORMAT_VERSION:
        raise ArtifactError(f"{path} has artifact format version {v}, written by a newer qcomp "
                            f"({m.get('qcomp_version', '?')}); this qcomp reads up to version {FORMAT_VERSION}: upgrade qcomp")
    if v < FORMAT_VERSION:  # version 1 did not say how its qweight codes are packed: reading them could misplace bits
        raise ArtifactError(f"{path} has artifact format version {v} (qcomp {m.get('qcomp_version', '?')}), which does not "
                            f"record the packed-code layout; recompile the model with this qcomp and save it again")
    pv = m.get("packing_version")
    if pv not in READABLE_VERSIONS:  # older layouts are converted on load (packing.upgrade)
        raise ArtifactError(f"{path} holds weights packed in layout version {pv!r}; this qcomp reads packed layout "
                            f"{', '.join(map(str, READABLE_VERSIONS))} only: recompile the model with this qcomp (or load it with the qcomp "
                            f"{m.get('qcomp_version', '?')} that wrote it)")
    if manifest_bytes(m) != raw:
        raise ArtifactError(f"{mfile} was modified or is corrupt (its manifest_sha256 or canonical form does not match); "
                            "save the artifact again")
    if not isinstance(m.get("files"), dict) or GRAPH_FILE not in m["files"] or WEIGHTS_FILE not in m["files"]:
        raise ArtifactError(f"{mfile} does not list {GRAPH_FILE} and {WEIGHTS_FILE}; the artifact is corrupt")
    return m


def _safe_name(name) -> bool:
    p = PurePosixPath(name) if isinstance(name, str) else None
    return p is not None and not p.is_absolute() and ".." not in p.parts and name == str(p) and name != MANIFEST


def read_files(path: str | os.PathLike, manifest: dict) -> dict[str, bytes]:
    """Every file the manifest lists, checked for presence, size and sha256."""
    path = Path(path)
    out = {}
    for name, entry in sorted(manifest["files"].items()):
        if not _safe_name(name) or not isinstance(entry, dict):
            raise ArtifactError(f"{path / MANIFEST} lists an invalid file entry {name!r}; the artifact is corrupt")
        f = path / name
        if not f.is_file():
            raise ArtifactError(f"{path} is missing {name}; the artifact is incomplete, copy or save it again")
        data = f.read_bytes()
        if len(data) != entry.get("bytes"):
            what = "truncated" if isinstance(entry.get("bytes"), int) and len(data) < entry["bytes"] else "changed in size"
            raise ArtifactError(f"{f} is {what}: {len(data)} bytes, the manifest says {entry.get('bytes')}; "
                                "copy or save the artifact again")
        if sha256_bytes(data) != entry.get("sha256"):
            raise ArtifactError(f"{f} is corrupt or was modified: its sha256 does not match the manifest; "
                                "copy or save the artifact again")
        out[name] = data
    return out


def _tensors(data: bytes, aliases) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as st_load

    try:
        params = st_load(data)
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise ArtifactError(f"{WEIGHTS_FILE} cannot be read: {type(e).__name__}: {e}") from None
    if not isinstance(aliases, dict):
        raise ArtifactError(f"{MANIFEST}: 'aliases' must be an object; the artifact is corrupt")
    for alias, target in sorted(aliases.items()):
        if target not in params or alias in params:
            raise ArtifactError(f"{MANIFEST}: alias {alias!r} -> {target!r} does not match {WEIGHTS_FILE}")
        params[alias] = params[target]
    return params


def _upgrade_packing(graph, version: int) -> None:
    """Weights of an artifact packed in an older layout -> the current layout, in memory (packing.upgrade)."""
    from qcomp.codegen.packing import upgrade

    done = set()
    for node in graph.find("qlinear"):
        target = graph.node(node.args[1]).attrs["target"]
        if target in done:
            continue
        spec, p = node.attrs["spec"], node.attrs["spec"].get("p", 1)
        try:
            graph.params[target] = upgrade(graph.params[target], spec["bits"] * p, node.attrs["n"],
                                           node.attrs["k"] // p, version)
        except (KeyError, ValueError) as e:
            raise ArtifactError(f"%{node.name}: its v{version}-packed weight cannot be converted ({e}); the artifact "
                                "is corrupt or was not written by qcomp") from None
        done.add(target)


def load(path: str | os.PathLike, device=None, runtime: str = "auto"):
    """Rebuild the compiled model saved at `path` (see module docstring); needs only `import qcomp`.

    device: where parameters live and the model runs (default: where the inputs are, CPU tensors).
    runtime: "auto" (GPU executor on CUDA, reference on CPU), "executor" or "reference".
    """
    from .api import CompiledModel
    from .config import CompileConfig
    from .qir import parse_graph
    from .qir.verifier import VerificationError, verify

    path = Path(path)
    m = read_manifest(path)
    files = read_files(path, m)
    try:
        graph = parse_graph(files[GRAPH_FILE].decode())
    except Exception as e:
        raise ArtifactError(f"{path / GRAPH_FILE} is not valid QIR: {type(e).__name__}: {e}") from None
    graph.params = _tensors(files[WEIGHTS_FILE], m.get("aliases", {}))
    if m["packing_version"] != PACKING_VERSION:
        _upgrade_packing(graph, m["packing_version"])
    try:
        verify(graph)
    except VerificationError as e:
        raise ArtifactError(f"{path} does not verify ({GRAPH_FILE} and {WEIGHTS_FILE} disagree): {e}") from None
    except Exception as e:
        raise ArtifactError(f"{path}: the graph cannot be checked: {type(e).__name__}: {e}") from None
    try:
        config = CompileConfig.from_json(json.dumps(m["config"]))
    except Exception as e:
        raise ArtifactError(f"{path / MANIFEST}: invalid config: {e}") from None
    report = {"layers": m.get("layers", []), "kept_float": m.get("kept_float", []), "passes": m.get("passes", []),
              "pipeline": m.get("pipeline"), "artifact": {"path": str(path), "manifest": m}}
    if m.get("generation"):
        report["generation"] = m["generation"]  # a decoder step: qcomp.generate.generator_for(model)
    return CompiledModel(graph, config, report, device=device, runtime=runtime)


def tokenizer_dir(path: str | os.PathLike) -> Path | None:
    """The tokenizer directory saved inside an artifact, or None."""
    d = Path(path) / TOKENIZER_DIR
    return d if d.is_dir() else None
