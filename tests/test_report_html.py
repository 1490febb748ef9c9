"""The HTML report written into every dump directory: contents, self-containment, failure pages, and
(when Debian's chromium is installed) that a headless browser renders the bits chart."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile

import pytest

import qcomp
from qcomp.models.tiny import builtin_model
from qcomp.pass_manager import PassError, register_pass
from qcomp.qir import parse_graph
from qcomp.report_html import REPORT_NAME, bits_chart_svg, graph_layers, render_report, summarize_layers, write_report


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    d = tmp_path_factory.mktemp("dump")
    model, (ids,) = builtin_model("tiny-llama")
    qcomp.compile(model, budget=4, example_inputs=(ids,), dump_dir=d, pipeline="canonicalize,quantize")
    return d


@pytest.fixture(scope="module")
def mixed_dump(tmp_path_factory):
    """The default pipeline: bit allocation gives layers different widths."""
    d = tmp_path_factory.mktemp("mixed")
    model, (ids,) = builtin_model("tiny-llama")
    compiled = qcomp.compile(model, budget=3.5, example_inputs=(ids,), dump_dir=d)
    return d, compiled


def test_report_written_with_passes_chart_and_ir(dump):
    page = (dump / REPORT_NAME).read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "canonicalize,quantize" in page and "average <b>3.125</b> bits/weight" in page
    assert page.count("<rect ") == 15 + 1  # 14 quantized layers + the float lm_head + one legend entry (3 bit)
    for f in ("00_captured.qir", "01_canonicalize.qir", "02_quantize.qir"):
        assert f in page
    ir = (dump / "02_quantize.qir").read_text()
    assert html.escape(ir) in page  # the whole IR, escaped
    assert "<script" not in page and not re.search(r'(src|href)="(https?:|//)', page)  # opens offline


def test_layers_from_graph(dump):
    rows = graph_layers(parse_graph((dump / "02_quantize.qir").read_text()))
    assert [r["layer"] for r in rows if not r["quantized"]] == ["lm_head"]
    s = summarize_layers(rows)
    assert s["quantized_layers"] == 14 and s["average_bits"] == 3.125 and s["quantized_numel"] == 294912
    assert s["quantized_bytes"] == 294912 * 3.125 / 8
    assert graph_layers(parse_graph((dump / "00_captured.qir").read_text()))[0]["spec"] == "float f32"


def test_chart_escapes_names_and_handles_no_layers():
    rows = [{"layer": "<evil>&", "quantized": True, "bits": 2, "spec": "uniform-w2", "bits_per_weight": 2.25}]
    svg = bits_chart_svg(rows)
    assert "&lt;evil&gt;&amp;" in svg and "<evil>" not in svg
    assert "No linear layers" in bits_chart_svg([])


def test_kernel_sources_and_reproducer_are_shown(dump, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(dump, d)
    (d / "kernels").mkdir()
    (d / "kernels" / "qlinear_w3.py").write_text("@triton.jit\ndef kernel(x_ptr):\n    pass\n")
    (d / "reproducer.qir").write_text("# qcomp reproducer: pass 'x' failed\n")
    (d / "allocation.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    (d / "allocation.json").write_text('{"budget": 3.5}')
    page = render_report(d)
    assert "data:image/png;base64,iVBORw0KGgpmYWtl" in page and "{&quot;budget&quot;: 3.5}" in page
    assert "kernels/qlinear_w3.py" in page and "@triton.jit" in page
    assert "Reproducer (a pass failed)" in page


def test_failing_pipeline_still_writes_a_report(tmp_path):
    @register_pass("test-report-boom")
    def boom(graph, ctx):
        """Always fails (report test)."""
        raise ValueError("boom")

    model, (x,) = builtin_model("tiny-mlp")
    with pytest.raises(PassError):
        qcomp.compile(model, budget=4, example_inputs=(x,), pipeline="canonicalize,test-report-boom", dump_dir=tmp_path)
    page = (tmp_path / REPORT_NAME).read_text()
    assert "canonicalize" in page and "Reproducer (a pass failed)" in page and "boom" in page


def test_write_report_never_raises(tmp_path):
    assert write_report(None) is None
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.warns(UserWarning, match="could not write the HTML report"):
        assert write_report(f) is None


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(mixed_dump, tmp_path):
    import matplotlib.image as mpimg
    import numpy as np

    from qcomp.report_html import _COLORS

    d, compiled = mixed_dump
    png = tmp_path / "r.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tempfile.mkdtemp()}",
           f"--screenshot={png}", "--window-size=1400,1800", (d / REPORT_NAME).as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    img = mpimg.imread(png)[..., :3]
    rows = compiled.layer_table()
    for bits in {int(r["spec"].split("-w")[1].split("-")[0]) for r in rows}:
        colour = np.array([int(_COLORS[bits][i:i + 2], 16) for i in (1, 3, 5)]) / 255
        n_layers = sum(f"-w{bits}-" in r["spec"] for r in rows)
        hits = (np.abs(img - colour).max(axis=-1) < 0.02).sum()
        # each bar is 16 px high and at least (bits / 16) of the ~700 px plot wide
        assert hits > 0.8 * n_layers * 16 * 700 * bits / 16, f"{bits}-bit bars not visible ({hits} px)"
