"""LLM quality benchmark: SmolLM2-135M perplexity and KL by budget, MiniLM embedding cosine, greedy text.

    python benchmarks/llm_quality.py                      # everything, ~hours on a 2-core CPU
    python benchmarks/llm_quality.py --budgets 4.0 --windows 4 --sections lm
    nohup python benchmarks/llm_quality.py > /tmp/llm_quality.log 2>&1 &

Sections (--sections, comma-separated):
  lm       SmolLM2-135M wikitext-2 perplexity (--windows windows of --seq-len tokens) of the float model,
           plain RTN (uniform, group 128) at --rtn-bits, and qcomp's default pipeline at each of --budgets,
           all in this run; KL(float || model) per token on the same windows.
  encoder  all-MiniLM-L6-v2 mean cosine of mean-pooled L2-normalized embeddings to the float model over
           --sentences wikitext-2 sentences at each of --encoder-budgets (unpadded: see qcomp.eval.encoder);
           data-free, and with --calibration N also calibrated on the N sentences after the evaluated ones
           (disjoint from them; batches of equal token length, unpadded).
  gen      greedy generation of SmolLM2 compiled for generation (qcomp.generate, KV cache) at --gen-budget.

Results are written after every row to --out (markdown) and its .json sidecar; rows of earlier runs
are kept unless --fresh, and a row measured again replaces its older version.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qcomp.config import DEFAULT_PIPELINE  # noqa: E402
from qcomp.eval import (encoder_sentences, evaluate_encoder, evaluate_lm, lm_windows, load_causal_lm,  # noqa: E402
                        load_encoder, load_tokenizer, mean_pooled_embeddings, read_text)
from qcomp.eval.encoder import tokenize_unpadded  # noqa: E402
from qcomp.eval.loading import compile_hf  # noqa: E402

RTN_PIPELINE = 'canonicalize,quantize(bits={bits}, grid="uniform", group_size=128)'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=str(ROOT / ".models"), help="directory with smollm2-135m and minilm-l6-v2")
    p.add_argument("--text", default="/work/shared/data/wikitext2_test.txt")
    p.add_argument("--sections", default="lm,encoder,gen")
    p.add_argument("--budgets", default="5.0,4.5,4.0,3.5,3.0")
    p.add_argument("--rtn-bits", default="4,5")
    p.add_argument("--windows", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--encoder-budgets", default="4.0,3.0")
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--calibration", type=int, default=0,
                   help="encoder: also compile with N calibration sentences (the N wikitext-2 sentences after the "
                        "evaluated ones; calibrated α and GPTQ); 0 = data-free rows only")
    p.add_argument("--gen-budget", type=float, default=5.0)
    p.add_argument("--prompt", default="The capital of France is Paris. The capital of Germany is")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--pipeline", default=None, help="pipeline for the budget rows (default: qcomp's default)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_llm.md"))
    p.add_argument("--fresh", action="store_true", help="drop rows of earlier runs")
    return p.parse_args(argv)


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def avg_bits(cm) -> float | None:
    alloc = cm.report.get("allocation")
    if alloc and alloc.get("avg_bits") is not None:
        return float(alloc["avg_bits"])
    rows = cm.layer_table()
    numel = sum(r["numel"] for r in rows)
    return sum(r["numel"] * r["bits_per_weight"] for r in rows) / numel if numel else None


class Results:
    """Rows keyed by (section, label), persisted as JSON and rendered as markdown after every change."""

    def __init__(self, out: Path, fresh: bool, run_info: dict):
        self.out, self.json = out, out.with_suffix(".json")
        self.data = {"runs": [], "rows": {}}
        if self.json.exists() and not fresh:
            self.data = json.loads(self.json.read_text())
        self.data["runs"].append(run_info)
        self.write()

    def put(self, section: str, label: str, row: dict) -> None:
        self.data["rows"][f"{section}|{label}"] = {"section": section, "label": label, **row}
        self.write()
        print(f"[{section}] {label}: " + ", ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in row.items() if k != "text"), flush=True)

    def rows(self, section: str) -> list[dict]:
        return [r for r in self.data["rows"].values() if r["section"] == section]

    def write(self) -> None:
        self.json.write_text(json.dumps(self.data, indent=1) + "\n")
        self.out.write_text(render(self.data))


def _fmt(v, f="{:.3f}") -> str:
    return "–" if v is None else f.format(v)


def render(data: dict) -> str:
    rows = data["rows"].values()
    lines = ["# LLM quality: SmolLM2-135M perplexity, MiniLM embeddings, greedy generation", "",
             "Written by `benchmarks/llm_quality.py` (CPU reference runtime). Runs that produced these rows:", ""]
    for r in data["runs"]:
        lines.append(f"- `{r['command']}` — {r['date']}, commit {r['commit']}, default pipeline `{r['default_pipeline']}`, "
                     f"{r['machine']}")
    lm = [r for r in rows if r["section"] == "lm"]
    if lm:
        lines += ["", "## SmolLM2-135M, wikitext-2 test perplexity", "",
                  "Non-overlapping windows (count × length in the table); KL = mean KL(float ‖ model) per token, nats. "
                  "Bits = average bits per weight over the quantized linear layers (scales included; lm_head stays float).", "",
                  "| model | pipeline | bits/weight | windows | ppl | Δppl vs float | KL | compile s | eval s | commit |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        ref = {(r["windows"], r["seq_len"]): r["ppl"] for r in lm if r["label"] == "float"}
        order = {"float": (0, 0.0)}
        for r in sorted(lm, key=lambda r: order.get(r["label"], (1 if r["label"].startswith("RTN") else 2,
                                                                   -float(r.get("budget") or r.get("bits") or 0)))):
            base = ref.get((r["windows"], r["seq_len"]))
            d = f"{100 * (r['ppl'] / base - 1):+.1f}%" if base and r["label"] != "float" else "–"
            lines.append(f"| {r['label']} | `{r.get('pipeline', '')}` | {_fmt(r.get('avg_bits'))} | "
                         f"{r['windows']}×{r['seq_len']} | {r['ppl']:.3f} | {d} | {_fmt(r.get('kl'), '{:.4f}')} | "
                         f"{_fmt(r.get('compile_seconds'), '{:.0f}')} | {_fmt(r.get('seconds'), '{:.0f}')} | {r.get('commit', '')} |")
    enc = [r for r in rows if r["section"] == "encoder"]
    if enc:
        lines += ["", "## all-MiniLM-L6-v2, cosine to float embeddings", "",
                  "Mean-pooled, L2-normalized embeddings of wikitext-2 sentences, unpadded (batches of equal length).", "",
                  "| model | pipeline | sensitivity / GPTQ | bits/weight | sentences | mean cosine | min cosine | target | "
                  "compile s | commit |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(enc, key=lambda r: (r.get("calibration") or 0, -r["budget"])):
            target = {4.0: "≥ 0.99", 3.0: "≥ 0.97"}.get(r["budget"], "")
            cal = (f"calibrated on {r['calibration']} other sentences, GPTQ" if r.get("calibration")
                   else "data-free, no GPTQ")
            lines.append(f"| {r['label']} | `{r['pipeline']}` | {cal} | {_fmt(r.get('avg_bits'))} | {r['n_sentences']} | "
                         f"{r['mean_cosine']:.5f} | {r['min_cosine']:.5f} | {target} | "
                         f"{_fmt(r.get('compile_seconds'), '{:.0f}')} | {r.get('commit', '')} |")
    gen = [r for r in rows if r["section"] == "gen"]
    for r in gen:
        lines += ["", f"## Greedy generation, SmolLM2-135M compiled for generation at budget {r['budget']:g}", "",
                  f"Pipeline `{r['pipeline']}`, {r.get('avg_bits') and round(r['avg_bits'], 3)} bits/weight, KV cache "
                  f"(qcomp.generate), {r['new_tokens']} new tokens in {r['seconds']:.1f} s, commit {r.get('commit', '')}.", "",
                  "```", r["text"], "```"]
    return "\n".join(lines) + "\n"


def run_lm(a, res: Results, info: dict) -> None:
    path = Path(a.models) / "smollm2-135m"
    model, tok = load_causal_lm(path), load_tokenizer(path)
    windows = lm_windows(tok, read_text(a.text), a.windows, a.seq_len)
    common = {"windows": a.windows, "seq_len": a.seq_len, "commit": info["commit"]}

    def progress(i, n, ppl):
        print(f"    window {i}/{n}: running ppl {ppl:.3f}", flush=True)

    ref = evaluate_lm(model, windows, keep_logits=True, progress=progress)
    res.put("lm", "float", {**common, **ref.row(), "kl": None, "pipeline": "float"})
    jobs = [(f"RTN {b:g} bit g128", RTN_PIPELINE.format(bits=int(b)), b + 16 / 128, {"bits": b}) for b in _floats(a.rtn_bits)]
    pipeline = a.pipeline or DEFAULT_PIPELINE
    jobs += [(f"qcomp budget {b:g}", pipeline, b, {"budget": b}) for b in _floats(a.budgets)]
    for label, pipe, budget, extra in jobs:
        t0 = time.perf_counter()
        cm = compile_hf(model, budget, pipe)
        compile_s = time.perf_counter() - t0
        r = evaluate_lm(cm, windows, reference=ref, progress=progress)
        res.put("lm", label, {**common, **extra, **r.row(), "pipeline": pipe, "avg_bits": avg_bits(cm),
                              "compile_seconds": compile_s})
        del cm


def run_encoder(a, res: Results, info: dict) -> None:
    path = Path(a.models) / "minilm-l6-v2"
    model, tok = load_encoder(path), load_tokenizer(path)
    tokens = tokenize_unpadded(tok, encoder_sentences(read_text(a.text), a.sentences))
    ref = mean_pooled_embeddings(model, tokens)
    pipeline = a.pipeline or DEFAULT_PIPELINE
    runs = [("", None)]
    if a.calibration > 0:
        cal = tokenize_unpadded(tok, encoder_sentences(read_text(a.text), a.sentences + a.calibration)[a.sentences:])
        runs.append((f" calibrated {len(cal)}", equal_length_batches(cal)))
    for suffix, calibration in runs:
        for b in _floats(a.encoder_budgets):
            t0 = time.perf_counter()
            cm = compile_hf(model, b, pipeline, **({"calibration": calibration} if calibration else {}))
            compile_s = time.perf_counter() - t0
            r = evaluate_encoder(cm, tokens, ref)
            res.put("encoder", f"qcomp budget {b:g}{suffix}",
                    {**r.row(), "budget": b, "pipeline": pipeline, "avg_bits": avg_bits(cm), "commit": info["commit"],
                     "calibration": sum(x[0].shape[0] for x in calibration) if calibration else 0,
                     "compile_seconds": compile_s})


def equal_length_batches(token_lists: list[torch.Tensor], batch_size: int = 32) -> list[tuple[torch.Tensor]]:
    """Calibration batches (ids [B, T],) of sentences of equal token length (no padding, as in the evaluation)."""
    by_len: dict[int, list[torch.Tensor]] = {}
    for t in token_lists:
        by_len.setdefault(int(t.numel()), []).append(t)
    return [(torch.stack(ts[j:j + batch_size]).to(torch.int64),) for _, ts in sorted(by_len.items())
            for j in range(0, len(ts), batch_size)]


def run_gen(a, res: Results, info: dict) -> None:
    from qcomp.generate import compile_for_generation

    path = Path(a.models) / "smollm2-135m"
    model, tok = load_causal_lm(path), load_tokenizer(path)
    pipeline = a.pipeline or DEFAULT_PIPELINE
    gen = compile_for_generation(model, budget=a.gen_budget, pipeline=pipeline)
    t0 = time.perf_counter()
    text, n_new = gen.generate_text(tok, a.prompt, max_new_tokens=a.max_new_tokens)
    res.put("gen", f"budget {a.gen_budget:g}", {"budget": a.gen_budget, "pipeline": pipeline, "avg_bits": avg_bits(gen.compiled),
                                                 "text": text, "new_tokens": n_new, "seconds": time.perf_counter() - t0,
                                                 "commit": info["commit"]})


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.manual_seed(0)
    info = {"command": "python benchmarks/llm_quality.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": _git_commit(),
            "default_pipeline": DEFAULT_PIPELINE,
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    res = Results(Path(a.out), a.fresh, info)
    sections = {"lm": run_lm, "encoder": run_encoder, "gen": run_gen}
    for s in [x.strip() for x in a.sections.split(",") if x.strip()]:
        if s not in sections:
            raise SystemExit(f"unknown section {s!r}; choose from {', '.join(sections)}")
        sections[s](a, res, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
