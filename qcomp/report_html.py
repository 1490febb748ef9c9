"""The debugging report: one static HTML page (`report.html`) written into every dump directory.

It shows the pass list with timings and stats (passes.json), a per-layer bits chart (inline SVG) and
table from the last IR, the IR after each pass (NN_<pass>.qir, folded), other pass outputs (PNG figures
embedded as base64, JSON reports folded), generated kernel sources found in the directory (`*.py`
files, also under `kernels/`) and a failing pass's reproducer. Everything is
inline — no scripts, no external files — so the page opens from disk without a server.

Also home to the per-layer summary of a graph (`graph_layers`, `summarize_layers`) that
`qcomp inspect` shows.
"""
from __future__ import annotations

import base64
import html
import json
import re
import warnings
from pathlib import Path

from .qir import Graph, parse_graph
from .qir.types import TensorType

REPORT_NAME = "report.html"
MAX_IR_CHARS = 2_000_000  # per IR file shown in the page; longer files are cut with a note
_IR_FILE = re.compile(r"^(\d\d)_(.+)\.qir$")
_DTYPE_BITS = {"f32": 32, "f16": 16, "bf16": 16, "f64": 64}


# -- per-layer summary -----------------------------------------------------------------------------

def graph_layers(graph: Graph) -> list[dict]:
    """One row per linear layer of `graph` (qlinear: spec and bits; linear: float, bits of its dtype)."""
    from .numerics.quant_spec import QuantSpec

    rows = []
    for node in graph.nodes:
        layer = node.attrs.get("layer") or node.name
        if node.op == "qlinear":
            spec = QuantSpec.from_dict(node.attrs["spec"])
            n, k = node.attrs["n"], node.attrs["k"]
            rot = node.attrs.get("rotate") or {}
            rows.append({"layer": layer, "n": n, "k": k, "numel": n * k, "quantized": True, "spec": spec.short(),
                         "bits": spec.bits, "rotate": rot.get("size"),
                         "bits_per_weight": spec.bits_per_weight(k=k, numel=n * k)})
        elif node.op == "linear" and len(node.args) > 1 and getattr(node.args[1], "name", None) in graph:
            w = graph.node(node.args[1]).type
            if isinstance(w, TensorType) and w.rank == 2 and w.is_static():
                n, k = w.shape
                rows.append({"layer": layer, "n": n, "k": k, "numel": n * k, "quantized": False,
                             "spec": f"float {w.dtype}", "bits": None, "rotate": None,
                             "bits_per_weight": float(_DTYPE_BITS.get(w.dtype, 32))})
    return rows


def summarize_layers(rows: list[dict]) -> dict:
    q = [r for r in rows if r["quantized"]]
    numel = sum(r["numel"] for r in q)
    return {
        "quantized_layers": len(q),
        "quantized_numel": numel,
        "average_bits": sum(r["numel"] * r["bits_per_weight"] for r in q) / numel if numel else None,
        "float_layers": [r["layer"] for r in rows if not r["quantized"]],
        "quantized_bytes": sum(r["numel"] * r["bits_per_weight"] for r in q) / 8,
        "fp16_bytes": 2 * numel,
    }


def ir_files(dump_dir: Path) -> list[Path]:
    """NN_<pass>.qir files of a dump directory, in pass order."""
    return sorted((p for p in Path(dump_dir).glob("*.qir") if _IR_FILE.match(p.name)), key=lambda p: p.name)


def last_ir_file(dump_dir: Path) -> Path | None:
    files = ir_files(dump_dir)
    return files[-1] if files else None


# -- the page ----------------------------------------------------------------------------------------

_COLORS = {1: "#d73027", 2: "#f46d43", 3: "#fdae61", 4: "#a6d96a", 5: "#66bd63", 6: "#1a9850", 7: "#006837", 8: "#00441b"}


def bits_chart_svg(rows: list[dict], width: int = 1100) -> str:
    """Horizontal bars of bits per weight, one per layer (float layers grey, capped at 16 on the axis)."""
    if not rows:
        return "<p>No linear layers in the final IR.</p>"
    bar, gap, label_w, top = 16, 4, 330, 28
    axis_max = 16.0
    plot_w = width - label_w - 70
    height = top + len(rows) * (bar + gap) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="bits per weight per layer" font-family="sans-serif" font-size="12">']
    for b in range(0, 17, 2):
        x = label_w + plot_w * b / axis_max
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 24}" stroke="#ddd"/>'
                   f'<text x="{x:.1f}" y="{top - 10}" text-anchor="middle" fill="#555">{b}</text>')
    for i, r in enumerate(rows):
        y = top + i * (bar + gap)
        v = r["bits_per_weight"]
        color = _COLORS.get(r["bits"], "#888") if r["quantized"] else "#999"
        w = plot_w * min(v, axis_max) / axis_max
        label = html.escape(r["layer"][-48:])
        out.append(f'<text x="{label_w - 8}" y="{y + bar - 4}" text-anchor="end">{label}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar}" fill="{color}">'
                   f'<title>{label}: {html.escape(r["spec"])}, {v:.3f} bits/weight</title></rect>'
                   f'<text x="{label_w + w + 4:.1f}" y="{y + bar - 4}" fill="#333">{v:.2f}'
                   f'{"" if r["quantized"] else " (float)"}</text>')
    out.append(f'<text x="{label_w + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle" fill="#555">'
               'bits per weight (codes + scales)</text>')
    used = sorted({r["bits"] for r in rows if r["quantized"]})
    for j, b in enumerate(used):  # legend: code width -> colour
        out.append(f'<rect x="{width - 60}" y="{top + j * 18}" width="12" height="12" fill="{_COLORS.get(b, "#888")}"/>'
                   f'<text x="{width - 44}" y="{top + j * 18 + 10}">{b} bit</text>')
    out.append("</svg>")
    return "".join(out)


def _passes_table(passes: list[dict]) -> str:
    if not passes:
        return "<p>No passes ran.</p>"
    total = sum(p.get("seconds", 0) for p in passes) or 1.0
    rows = ["<table><tr><th>#</th><th>pass</th><th>options</th><th>time (ms)</th><th>share</th><th>changed</th>"
            "<th>stats</th></tr>"]
    for p in passes:
        s = p.get("seconds", 0.0)
        rows.append(f"<tr><td>{p.get('index', '')}</td><td><a href='#ir-{p.get('index', 0):02d}'>{html.escape(str(p['name']))}"
                    f"</a></td><td><code>{html.escape(json.dumps(p.get('options', {}), sort_keys=True, default=str))}</code></td>"
                    f"<td class=num>{s * 1e3:.2f}</td><td><div class=share style='width:{100 * s / total:.0f}px'></div></td>"
                    f"<td>{'yes' if p.get('changed') else 'no'}</td>"
                    f"<td><code>{html.escape(json.dumps(p.get('stats', {}), sort_keys=True, default=str))[:600]}</code></td></tr>")
    return "\n".join(rows) + "</table>"


def _layers_table(rows: list[dict]) -> str:
    out = ["<table><tr><th>layer</th><th>shape</th><th>spec</th><th>rotation</th><th>bits/weight</th></tr>"]
    for r in rows:
        out.append(f"<tr><td>{html.escape(r['layer'])}</td><td>{r['n']}x{r['k']}</td><td>{html.escape(r['spec'])}</td>"
                   f"<td>{r['rotate'] or '-'}</td><td class=num>{r['bits_per_weight']:.3f}</td></tr>")
    return "\n".join(out) + "</table>"


def _code_block(title: str, text: str, anchor: str = "", open_: bool = False) -> str:
    if len(text) > MAX_IR_CHARS:
        text = text[:MAX_IR_CHARS] + f"\n... cut: {len(text) - MAX_IR_CHARS:,} more characters in the file\n"
    a = f" id='{anchor}'" if anchor else ""
    return (f"<details{a}{' open' if open_ else ''}><summary>{html.escape(title)} ({text.count(chr(10)):,} lines)</summary>"
            f"<pre>{html.escape(text)}</pre></details>")


_CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}h1{font-size:22px}h2{font-size:18px;
margin-top:28px;border-bottom:1px solid #ccc}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;
padding:3px 8px;text-align:left;vertical-align:top}td.num{text-align:right}pre{background:#f6f8fa;padding:8px;
overflow:auto;font-size:12px;max-height:600px}.share{background:#4a90d9;height:10px}summary{cursor:pointer;margin:4px 0}
.summary{font-size:15px}"""


def render_report(dump_dir: str | Path) -> str:
    """The report page for `dump_dir` as an HTML string."""
    d = Path(dump_dir)
    info = json.loads((d / "passes.json").read_text()) if (d / "passes.json").is_file() else {}
    files = ir_files(d)
    rows: list[dict] = []
    if files:
        try:
            rows = graph_layers(parse_graph(files[-1].read_text()))
        except Exception as e:  # the page still shows the passes and IR text
            rows, chart_note = [], f"<p>Per-layer data unavailable: {html.escape(str(e))}</p>"
        else:
            chart_note = ""
    else:
        chart_note = "<p>No IR files in this directory.</p>"
    s = summarize_layers(rows)
    avg = f"{s['average_bits']:.3f}" if s["average_bits"] is not None else "-"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qcomp report: {html.escape(d.name)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>qcomp compilation report</h1><p class=summary>pipeline <code>{html.escape(str(info.get('pipeline', '?')))}</code>"
             f" &middot; {s['quantized_layers']} quantized layers, {s['quantized_numel']:,} weights, average <b>{avg}</b> "
             f"bits/weight &middot; float layers: {html.escape(', '.join(s['float_layers']) or 'none')}</p>",
             "<h2>Passes</h2>", _passes_table(info.get("passes", [])),
             f"<h2>Bits per layer</h2><p>From {html.escape(files[-1].name) if files else '-'}.</p>", chart_note,
             bits_chart_svg(rows), "<details><summary>per-layer table</summary>", _layers_table(rows), "</details>",
             "<h2>IR after each pass</h2>"]
    for f in files:
        m = _IR_FILE.match(f.name)
        parts.append(_code_block(f.name, f.read_text(), anchor=f"ir-{m.group(1)}"))
    extras = [f for f in sorted(d.glob("*.json")) if f.name != "passes.json"]
    images = sorted(d.glob("*.png"))
    if extras or images:
        parts.append("<h2>Other pass outputs</h2>")
        parts += [f"<figure><img alt='{html.escape(f.name)}' style='max-width:1100px' src='data:image/png;base64,"
                  f"{base64.b64encode(f.read_bytes()).decode()}'><figcaption>{html.escape(f.name)}</figcaption></figure>"
                  for f in images]
        parts += [_code_block(f.name, f.read_text()) for f in extras]
    kernels = sorted(set(d.glob("*.py")) | set(d.glob("kernels/**/*.py")))
    parts.append("<h2>Generated kernels</h2>")
    parts += [_code_block(str(k.relative_to(d)), k.read_text()) for k in kernels] or [
        "<p>No kernel sources in this dump directory (kernels are generated at lowering).</p>"]
    if (d / "reproducer.qir").is_file():
        parts += ["<h2>Reproducer (a pass failed)</h2>", _code_block("reproducer.qir", (d / "reproducer.qir").read_text(), open_=True)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(dump_dir: str | Path | None) -> Path | None:
    """Write `report.html` into `dump_dir` (no-op for None). Never raises: a report failure only warns."""
    if dump_dir is None:
        return None
    try:
        path = Path(dump_dir) / REPORT_NAME
        path.write_text(render_report(dump_dir))
        return path
    except Exception as e:
        warnings.warn(f"qcomp: could not write the HTML report in {dump_dir}: {type(e).__name__}: {e}", stacklevel=2)
        return None
