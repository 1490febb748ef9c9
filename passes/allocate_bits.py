"""allocate-bits: choose each linear layer's quantization by exact DP under an average-bits budget.

For every float `linear` node (except `skip`, default "lm_head", which stays float and is not counted)
the pass builds an option menu (`qcomp.allocation.default_options`: grid, bits, group size that divides
in_features, plus 16-bit keep), each with its exact storage cost and relative error t² measured on the
graph's weight (or the Gaussian-grid MSE for rotated normal grids); measures (or reads from the cache)
each layer's sensitivity α by noise injection; and solves

    min Σ α_l t²_l  s.t.  Σ numel_l · bits_l <= budget · Σ numel_l

with `qcomp.allocation.allocate` (provably within budget). Budget semantics: bits per weight averaged
over the allocated layers, scales/offsets/lookup tables included, a kept layer counts 16.

Output: `node.attrs["quant"] = {"spec": {...}, ...}` or `{"keep": true, ...}` on each allocated linear
(what the `quantize` pass reads), `ctx.artifacts["allocation"]` (the per-layer table), and in the
dump directory `allocation.json` and `allocation.png` (bits per layer).

tie_siblings=True gives the linears that read the same value (q/k/v, gate/up) one shared choice: the DP sees each
such group as one item (cost Σ numel·bits, error Σ α·t² of its members), so that `fuse-siblings` can run them as
one kernel afterwards.

Rotation is structural: a layer whose node carries `attrs["hadamard"]` (set by insert-hadamard /
fuse-hadamard: its weight is already in the rotated basis) gets the rotated menu, others the unrotated one. family="auto" uses Gaussian grids for
rotated layers and uniform grids otherwise; only specs the quantizer implements are offered.
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import torch

from qcomp.allocation import LayerCandidates, Option, allocate, keep_option
from qcomp.allocation.dp import LayerChoice
from qcomp.allocation.options import candidate_specs, default_error, option_for
from qcomp.allocation.sensitivity import Sensitivity, SensitivityConfig, measure_sensitivity
from qcomp.config import check_budget
from qcomp.numerics.quant_spec import QuantSpec
from qcomp.numerics.quantizer import quantize_weight
from qcomp.pass_manager import NodeError, PassContext, register_pass
from qcomp.qir import Graph

from .quantize_weights import matches


def quantizer_supports(spec: QuantSpec) -> bool:
    """Whether `quantize_weight` implements spec (tried on a small dummy weight)."""
    k = spec.group(256) * 2 if spec.group_size != -1 else 256
    try:
        quantize_weight(torch.randn(2, k), spec)
    except NotImplementedError:
        return False
    return True


def layer_options(w: torch.Tensor, rotated: bool, family: str, group_sizes, bits) -> tuple[Option, ...]:
    """The menu for one weight: specs of `family` the quantizer supports, with rotate == rotated, plus keep.

    family "auto": Gaussian grids for rotated layers (uniform if the quantizer lacks them), else uniform.
    """
    n, k = w.shape
    families = [family] if family != "auto" else (["normal", "uniform"] if rotated else ["uniform"])
    specs = []
    for fam in families:
        specs = [s for s, rot in candidate_specs(k, fam, bits, group_sizes) if rot == rotated and _supported(s)]
        if specs:
            break
    # a rotated layer's weight is already in the rotated basis: measure on it as it is (identity rotate_fn)
    opts = [option_for(s, n, k, rotate=rotated, error=default_error(s, rotated, w.float(), rotate_fn=lambda x: x))
            for s in specs]
    return tuple(opts) + (keep_option(),)


_SUPPORTED: dict[QuantSpec, bool] = {}


def _supported(spec: QuantSpec) -> bool:
    if spec not in _SUPPORTED:
        _SUPPORTED[spec] = quantizer_supports(spec)
    return _SUPPORTED[spec]


def _levels(levels) -> tuple[float, ...]:
    if isinstance(levels, str):
        return tuple(float(t) for t in levels.split(",") if t.strip())
    return tuple(float(t) for t in levels)


def read_sensitivity_file(path: str, layers: list[str]) -> Sensitivity:
    """α of `layers` from a sensitivity JSON (the cache format); a clear error for a bad file or missing layers."""
    p = Path(path)
    try:
        sens = Sensitivity.from_dict(json.loads(p.read_text()))
    except FileNotFoundError:
        raise ValueError(f"sensitivity_file {path!r} does not exist") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"sensitivity_file {path!r} is not a qcomp sensitivity JSON ({type(e).__name__}: {e}); pass a "
                         "sensitivity-*.json from a compile's cache_dir") from None
    missing = [n for n in layers if n not in sens.alphas]
    if missing:
        raise ValueError(f"sensitivity_file {path!r} has no α for {len(missing)} of the {len(layers)} layers to allocate "
                         f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): it was measured on another "
                         "graph; measure again (drop sensitivity_file) or pass the file of this model and pipeline")
    sens.cost = {**sens.cost, "file": str(p)}
    return sens


@register_pass("allocate-bits")
def allocate_bits(graph: Graph, ctx: PassContext, budget: float | None = None, family: str = "auto",
                  mode: str | None = None, levels=(0.1, 0.2), n_batches: int = 4, metric: str = "auto",
                  group_sizes=(64, 128, 256), bits=(2, 3, 4, 5, 6, 7, 8), skip: str = "lm_head",
                  resolution: float | None = None, cache: bool = True, plot: bool = True,
                  sensitivity_file: str | None = None, tie_siblings: bool = False):
    """Choose per-layer bits/grid/group by exact DP under the average-bits budget (see module docstring).

    sensitivity_file: a sensitivity JSON written earlier (a `sensitivity-*.json` of the cache directory, e.g. measured
    on a GPU) whose α are used instead of measuring them; it must name every allocated layer."""
    budget = check_budget(budget if budget is not None else ctx.options.get("budget", 4.0))
    mode = mode or ctx.options.get("sensitivity_mode") or ("calibrated" if ctx.options.get("calibration") else "data-free")
    nodes = [n for n in graph.nodes if n.op == "linear" and not matches(n.attrs.get("layer") or n.name, skip)]
    if not nodes:
        return graph, {"allocated": 0}

    layers_in = []
    for n in nodes:
        w = graph.param(n.args[1])
        if w.dim() != 2:
            raise NodeError(n, f"linear weight must be 2-D, got {tuple(w.shape)}")
        layers_in.append((n, w, layer_options(w, bool(n.attrs.get("hadamard")), family, tuple(group_sizes), tuple(bits))))

    # refuse an infeasible budget before paying for sensitivity (with alpha = 0 this raises or returns at once)
    allocate([LayerCandidates(n.name, int(w.numel()), 0.0, opts) for n, w, opts in layers_in], budget, resolution)

    if sensitivity_file:
        sens = read_sensitivity_file(sensitivity_file, [n.name for n in nodes])
        mode = f"from {Path(sensitivity_file).name} ({sens.config.get('mode', '?')})"
    else:
        cfg = SensitivityConfig(mode=mode, levels=_levels(levels), n_batches=int(n_batches), metric=metric,
                                seed=int(ctx.options.get("seed", 0)))
        sens = measure_sensitivity(graph, [n.name for n in nodes], cfg, example_inputs=tuple(ctx.example_inputs),
                                   calibration=ctx.options.get("calibration"),
                                   cache_dir=ctx.options.get("cache_dir") if cache else False,
                                   device=ctx.options.get("device"), progress=bool(ctx.options.get("progress", True)))
    negative = [n.name for n in nodes if not sens.alphas[n.name] > 0]
    if negative:
        warnings.warn(f"{len(negative)} layer(s) measured a non-positive sensitivity (noise): {', '.join(negative[:5])}"
                      f"{' ...' if len(negative) > 5 else ''}; treated as alpha = 0", stacklevel=2)
    alphas = {n.name: max(float(sens.alphas[n.name]), 0.0) for n in nodes}
    groups = sibling_groups(graph, nodes) if tie_siblings else [[n.name] for n in nodes]
    by_name = {n.name: (n, w, opts) for n, w, opts in layers_in}
    alloc = allocate([tied_candidates([by_name[m] for m in grp], alphas) for grp in groups], budget,
                     resolution=resolution)
    chosen = {}  # node name -> (its own option for the group's choice, alpha)
    for grp, c in zip(groups, alloc.choices):
        for m in grp:
            own = next(o for o in by_name[m][2] if (o.spec, o.rotate) == (c.option.spec, c.option.rotate))
            chosen[m] = (own, alphas[m])

    g = graph.copy()
    rows = []
    for n, w, opts in layers_in:
        o, alpha = chosen[n.name]
        c = LayerChoice(n.name, int(w.numel()), alpha, o)
        quant = {"keep": True} if o.is_keep else {"spec": o.spec.to_dict()}
        quant.update({"bits": o.bits, "alpha": c.alpha, "t2": o.error})
        g.node(n.name).attrs["quant"] = quant
        s = o.spec
        rows.append({"name": n.attrs.get("layer") or n.name, "node": n.name, "n": int(w.shape[0]), "k": int(w.shape[1]),
                     "numel": c.numel, "bits": o.bits, "option": o.label, "grid": s.grid if s else "keep",
                     "code_bits": s.bits if s else 16, "p": s.p if s else None, "group": s.group_size if s else None,
                     "rotate": o.rotate, "alpha": c.alpha, "t2": o.error, "predicted_delta": c.delta,
                     "n_options": len(opts)})
    report = {"budget": budget, "avg_bits": alloc.avg_bits, "min_budget": alloc.min_budget,
              "tied_groups": [grp for grp in groups if len(grp) > 1],
              "predicted_delta": alloc.objective, "resolution": alloc.resolution, "metric": sens.metric,
              "sensitivity": {"mode": mode, "levels": list(sens.levels), "cost": sens.cost, "key": sens.key},
              "counted": "allocated linear layers; scales, offsets and lookup tables included; kept layers at 16 bits",
              "skipped": [n.attrs.get("layer") or n.name for n in graph.nodes
                          if n.op == "linear" and n.name not in {a.name for a in nodes}],
              "layers": rows}
    ctx.artifacts["allocation"] = report
    if ctx.dump_dir is not None:
        write_report(report, Path(ctx.dump_dir), plot=plot)
    kept = sum(r["grid"] == "keep" for r in rows)
    return g, {"allocated": len(rows), "kept_16bit": kept, "avg_bits": round(alloc.avg_bits, 5),
               "predicted_delta": alloc.objective, "sensitivity_seconds": sens.cost.get("seconds"),
               "sensitivity_cached": bool(sens.cost.get("cached"))}


def sibling_groups(graph: Graph, nodes) -> list[list[str]]:
    """`nodes` (linears) grouped by the value they read, in graph order: q/k/v of one attention, gate/up of one MLP.
    Members share the input, in_features and rotation, hence the same option menu."""
    groups: dict[tuple, list[str]] = {}
    for n in nodes:
        key = (n.args[0], int(graph.param(n.args[1]).shape[1]), repr(n.attrs.get("hadamard")))
        groups.setdefault(key, []).append(n.name)
    return list(groups.values())


def tied_candidates(members, alphas: dict[str, float]) -> LayerCandidates:
    """One DP item for layers that must share an option: the options all members offer (same spec and rotation),
    each costing the members' Σ numel·bits and erring Σ α·t² (alpha 1); a single layer is its own item."""
    if len(members) == 1:
        n, w, opts = members[0]
        return LayerCandidates(n.name, int(w.numel()), alphas[n.name], opts)
    numel = sum(int(w.numel()) for _, w, _ in members)
    menus = [{(o.spec, o.rotate): o for o in opts} for _, _, opts in members]
    common = [key for key in menus[0] if all(key in m for m in menus[1:])]
    opts = []
    for key in common:
        parts = [(m[key], int(w.numel()), alphas[n.name]) for m, (n, w, _) in zip(menus, members)]
        opts.append(dataclasses.replace(parts[0][0], bits=sum(o.bits * k for o, k, _ in parts) / numel,
                                        error=sum(o.error * a for o, _, a in parts)))
    return LayerCandidates("+".join(n.name for n, _, _ in members), numel, 1.0, tuple(opts))


def write_report(report: dict, dump_dir: Path, plot: bool = True) -> None:
    """allocation.json (the per-layer table) and allocation.png (bits per layer) in dump_dir."""
    dump_dir.mkdir(parents=True, exist_ok=True)
    (dump_dir / "allocation.json").write_text(json.dumps(report, indent=1) + "\n")
    if not plot:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: allocation.png not written (pip install qcomp[plot])", stacklevel=2)
        return
    rows = report["layers"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(rows) + 2), 4.0))
    colors = {"keep": "tab:gray", "normal": "tab:blue", "uniform": "tab:orange", "uniform_asym": "tab:green"}
    ax.bar(range(len(rows)), [r["bits"] for r in rows], color=[colors.get(r["grid"], "tab:red") for r in rows])
    ax.axhline(report["budget"], color="k", lw=1, ls="--", label=f"budget {report['budget']:g}")
    ax.axhline(report["avg_bits"], color="tab:red", lw=1, label=f"achieved {report['avg_bits']:.3f}")
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("bits per weight")
    ax.set_title(f"allocate-bits: predicted Δ {report['predicted_delta']:.4g} ({report['metric']})")
    if len(rows) <= 40:
        ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=90, fontsize=6)
    ax.legend(fontsize=8)
    ax.set_ylim(0, max(r["bits"] for r in rows) * 1.1 if math.isfinite(report["avg_bits"]) else 17)
    fig.tight_layout()
    fig.savefig(dump_dir / "allocation.png", dpi=110)
    plt.close(fig)
