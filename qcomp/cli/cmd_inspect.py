"""qcomp inspect PATH [--json]: what the compiler decided, from an artifact or a dump directory.

An artifact (manifest.json) is integrity-checked (hashes, format version) and summarized from its
manifest and graph.qir; a dump directory (passes.json, NN_<pass>.qir) from its last IR file. Both show
the per-layer table (shape, spec, bits per weight, relative error where known), the average bits and sizes.
"""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("inspect", help="per-layer table, average bits and size of an artifact or dump directory")
    p.add_argument("path", help="an artifact directory (qcomp compile --out) or a dump directory (--dump-dir)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--traceback", action="store_true", help="show Python tracebacks on errors")
    p.set_defaults(func=run)


def inspect_path(path: str | Path) -> dict:
    """A JSON-able summary of an artifact or a dump directory."""
    from qcomp import artifact
    from qcomp.qir import parse_graph
    from qcomp.report_html import graph_layers, last_ir_file, summarize_layers

    path = Path(path)
    if (path / artifact.MANIFEST).is_file():
        m = artifact.read_manifest(path)
        files = artifact.read_files(path, m)
        graph = parse_graph(files[artifact.GRAPH_FILE].decode())
        known = {r.get("layer"): r for r in m.get("layers", [])}
        layers = [{**row, "rel_mse": known.get(row["layer"], {}).get("rel_mse")} for row in graph_layers(graph)]
        out = {"kind": "artifact", "path": str(path), "format_version": m["format_version"],
               "qcomp_version": m.get("qcomp_version"), "torch_version": m.get("torch_version"),
               "pipeline": m.get("pipeline"), "config": m.get("config"), "integrity": "ok",
               "files": {k: v["bytes"] for k, v in m["files"].items()},
               "size_bytes": sum(v["bytes"] for v in m["files"].values()) + (path / artifact.MANIFEST).stat().st_size,
               "tokenizer": artifact.tokenizer_dir(path) is not None}
    elif (path / "passes.json").is_file() or last_ir_file(path) is not None:
        ir = last_ir_file(path)
        if ir is None:
            raise ValueError(f"{path} has passes.json but no NN_<pass>.qir files")
        graph = parse_graph(ir.read_text())
        passes = json.loads((path / "passes.json").read_text()) if (path / "passes.json").is_file() else {}
        layers = [{**row, "rel_mse": None} for row in graph_layers(graph)]
        out = {"kind": "dump", "path": str(path), "ir_file": ir.name, "pipeline": passes.get("pipeline"),
               "passes": [{"name": p["name"], "seconds": p["seconds"], "changed": p["changed"]} for p in passes.get("passes", [])]}
    else:
        raise ValueError(f"{path} is neither a qcomp artifact (manifest.json) nor a dump directory (passes.json, "
                         "NN_<pass>.qir); pass the directory given to --out or --dump-dir")
    out["graph"] = graph.name
    out["layers"] = layers
    out.update(summarize_layers(layers))
    return out


def format_table(info: dict) -> str:
    lines = [f"{info['kind']} {info['path']}  (graph {info['graph']!r}, pipeline {info.get('pipeline')})"]
    if info["kind"] == "artifact":
        lines.append(f"format {info['format_version']}, written by qcomp {info['qcomp_version']} / torch "
                     f"{info['torch_version']}; integrity ok (sha256 of every file)")
    lines.append(f"{'layer':<44} {'shape':>13} {'spec':>26} {'bits/w':>7} {'rel mse':>9}")
    for r in info["layers"]:
        mse = f"{r['rel_mse']:.2e}" if isinstance(r.get("rel_mse"), float) else "-"
        lines.append(f"{r['layer'][:44]:<44} {str(r['n']) + 'x' + str(r['k']):>13} {r['spec']:>26} "
                     f"{r['bits_per_weight']:>7.3f} {mse:>9}")
    avg = info["average_bits"]
    lines.append(f"{info['quantized_layers']} quantized layers, {info['quantized_numel']:,} weights, average "
                 f"{avg:.3f} bits/weight" if avg is not None else "no quantized layers")
    lines.append(f"float linear layers: {', '.join(info['float_layers']) or 'none'}")
    lines.append(f"quantized weights: {info['quantized_bytes'] / 2**20:.2f} MiB (fp16: {info['fp16_bytes'] / 2**20:.2f} MiB)")
    if info["kind"] == "artifact":
        lines.append(f"artifact size: {info['size_bytes'] / 2**20:.2f} MiB"
                     + ("; includes a tokenizer" if info["tokenizer"] else ""))
    else:
        lines.append(f"IR from {info['ir_file']}; passes: " + ", ".join(f"{p['name']} ({p['seconds'] * 1e3:.1f} ms)"
                                                                      for p in info["passes"]))
    return "\n".join(lines)


def run(args) -> int:
    info = inspect_path(args.path)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else format_table(info))
    return 0
