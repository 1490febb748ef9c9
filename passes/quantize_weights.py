"""quantize: replace each linear by a qlinear holding packed codes, scales and a lookup table.

The spec of a layer comes from `node.attrs["quant"]` when allocate-bits set it ({"spec": {...}} or
{"keep": true}), else from the pass options (grid, bits, group_size, scale, p) — with `bits` derived
from the compile budget when not given: the most bits b with b + 16/group <= budget (uniform RTN, the
pipeline's default until allocate-bits runs). Layers matching `skip` (comma-separated names; default
"lm_head") stay float and are not counted in the budget; layers the allocator keeps at 16 bits are
reported at 16 bits per weight. A group size that does not divide in_features falls back to the largest
power-of-two divisor >= 16, else per-channel. When bits come from the budget, a layer whose fallback group
would exceed it goes per-channel, or one bit lower if even that does not fit; the choice is recorded per layer.

GPTQ (`gptq`, default on when ctx.options["calibration"] holds calibration batches): each weight is quantized
by `qcomp.numerics.gptq.gptq_quantize` with the Hessian H = mean x^T x of the inputs the linear sees in this
graph (after the online rotations), collected by running the pass's input graph (float weights) on the
reference runtime over the calibration batches. Same storage as without GPTQ. Linears sharing an input share
one H; Hessians are collected for groups of layers whose H's fit in `hessian_gb` (one calibration run per
group), so an 8B model (K up to 14336: 0.8 GB per H) does not hold all of them at once. Each report row then
also carries out_rel_mse (tr(D H D^T) / tr(W H W^T), D = W - W_hat, on the calibration inputs), the same for
the plain quantizer (out_rel_mse_plain) and GPTQ's proxy loss. Options: damp (fraction of mean H_ii added to
the diagonal), block (lazy-update width), act_order (columns by decreasing H_ii, static group scales),
sequential (each H from the graph with every earlier linear already quantized, as the GPTQ reference does
block by block: one calibration run per distinct linear input, each stopping at that input).
"""
from __future__ import annotations

import fnmatch
import math

import torch

from qcomp.codegen.packing import pack_codes
from qcomp.numerics.quant_spec import QuantSpec
from qcomp.numerics.gptq import collect_hessians, gptq_quantize, output_rel_error
from qcomp.numerics.quantizer import dequantize_weight, quantize_weight, relative_mse
from qcomp.pass_manager import NodeError, PassContext, register_pass
from qcomp.qir import Graph, Node, Ref, TensorType


def bits_for_budget(budget: float, group_size: int) -> int:
    overhead = 16 / group_size if group_size > 0 else 0.0
    bits = math.floor(budget - overhead + 1e-9)
    if bits < 1:
        raise ValueError(f"budget {budget} is below the cheapest uniform option (1 bit + {overhead:g} for scales = "
                         f"{1 + overhead:g} bits per weight); raise the budget to at least {1 + overhead:g}")
    return min(bits, 8)


def fit_group(spec: QuantSpec, k: int) -> QuantSpec:
    if spec.group_size == -1 or k % spec.group_size == 0:
        return spec
    g = spec.group_size
    while g >= 16:
        if k % g == 0 and g % spec.p == 0:
            return QuantSpec(**{**spec.to_dict(), "group_size": g})
        g //= 2
    return QuantSpec(**{**spec.to_dict(), "group_size": -1})


def within_budget(spec: QuantSpec, k: int, budget: float) -> QuantSpec:
    """The spec with the most bits whose cost on in_features k (fallback group, else per-channel) fits the budget."""
    for bits in range(spec.bits, 0, -1):
        s = fit_group(QuantSpec(**{**spec.to_dict(), "bits": bits}), k)
        for cand in (s, QuantSpec(**{**s.to_dict(), "group_size": -1})):
            if cand.bits_per_weight(k=k) <= budget + 1e-9:
                return cand
    raise ValueError(f"no {spec.grid} spec fits {budget} bits per weight for in_features {k}")


def matches(layer: str, patterns: str | list) -> bool:
    pats = [p.strip() for p in patterns.split(",")] if isinstance(patterns, str) else list(patterns)
    return any(p and (layer == p or fnmatch.fnmatch(layer, p)) for p in pats)


def quantize_linear(g: Graph, node: Node, spec: QuantSpec, hessian: torch.Tensor | None = None,
                    damp: float = 0.01, block: int = 128, act_order: bool = False) -> tuple[Node, dict]:
    """Replace linear `node` in g by a qlinear with `spec` (GPTQ when `hessian` is given); returns the new
    node and its report row."""
    w = g.param(node.args[1])
    n, k = w.shape
    spec = fit_group(spec, k)
    extra = {}
    if hessian is None:
        q = quantize_weight(w.to(torch.float32), spec)
        w_hat = dequantize_weight(q, spec)
    else:
        stats: dict = {}
        q = gptq_quantize(w.to(torch.float32), hessian, spec, damp=damp, block=block, act_order=act_order, stats=stats)
        w_hat = dequantize_weight(q, spec)
        plain = dequantize_weight(quantize_weight(w.to(torch.float32), spec), spec)
        extra = {"out_rel_mse": output_rel_error(w, w_hat, hessian),
                 "out_rel_mse_plain": output_rel_error(w, plain, hessian), "gptq_proxy_loss": stats["proxy_loss"]}
    err = relative_mse(w, w_hat)
    layer = node.attrs.get("layer") or node.name
    tensors = {"qweight": pack_codes(q.codes, spec.code_bits), "scales": q.scales, "lut": q.lut.to(torch.float32)}
    if q.offsets is not None:
        tensors["offsets"] = q.offsets
    refs = {}
    for kind, t in tensors.items():
        target = f"{layer}.{kind}"
        i = 1
        while target in g.params:
            target, i = f"{layer}.{kind}_{i}", i + 1
        refs[kind] = Ref(g.add_param(target, t.contiguous(), before=node, name=f"{layer}.{kind}").name)
    bias = node.args[2] if len(node.args) > 2 else None
    attrs = {k2: v for k2, v in node.attrs.items() if k2 != "quant"}
    attrs.update({"spec": spec.to_dict(), "n": int(n), "k": int(k), "rotate": None})
    new = Node(g.fresh_name(node.name + "_q"), "qlinear",
               (node.args[0], refs["qweight"], refs["scales"], refs["lut"], refs.get("offsets"), bias), {}, attrs, node.type)
    g.add(new, before=node)
    g.replace_uses(node.name, Ref(new.name))
    w_ref = node.args[1]
    g.erase(node)
    g.rename(new, node.name)
    if not any(w_ref in u.refs() for u in g.nodes):
        g.erase(g.node(w_ref))
    row = {"layer": layer, "n": int(n), "k": int(k), "numel": int(n * k), "spec": spec.short(),
           "bits_per_weight": spec.bits_per_weight(k=k, numel=n * k), "rel_mse": err, **extra}
    return g.node(node.name), row


def _hessian_groups(items: list[tuple[Node, QuantSpec]], graph: Graph, max_bytes: float) -> list[list[str]]:
    """Producers (args[0] of the linears) in graph order, cut into groups whose K x K float32 H's fit max_bytes."""
    groups, cur, size, seen = [], [], 0.0, set()
    for node, _ in items:
        src = node.args[0]
        if not isinstance(src, Ref):
            raise NodeError(node, "gptq: the linear's input is not a graph value")
        if src.name in seen:
            continue
        seen.add(src.name)
        k = int(graph.param(node.args[1]).shape[1])
        if cur and size + 4.0 * k * k > max_bytes:
            groups.append(cur)
            cur, size = [], 0.0
        cur.append(src.name)
        size += 4.0 * k * k
    if cur:
        groups.append(cur)
    return groups


@register_pass("quantize")
def quantize(graph: Graph, ctx: PassContext, bits: int | None = None, grid: str = "uniform", group_size: int = 128,
             scale: str | None = None, p: int = 1, skip: str = "lm_head", gptq: bool | None = None,
             damp: float = 0.01, block: int = 128, act_order: bool = False, sequential: bool = False,
             hessian_gb: float = 4.0):
    """Quantize every linear (except `skip`) to its allocated spec or the default spec (GPTQ with calibration)."""
    calibration = ctx.options.get("calibration")
    if gptq is None:
        gptq = bool(calibration)
    elif gptq and not calibration:
        raise ValueError("quantize(gptq=True) needs calibration batches: pass calibration=[(input_ids,), ...] to "
                         "qcomp.compile (ctx.options['calibration']), or use quantize(gptq=False)")
    budget_bits = None
    if bits is None:
        budget = ctx.options.get("budget")
        if budget is None:
            raise ValueError("quantize needs bits=... or a compile budget")
        if budget >= 16:
            return graph, {"quantized": 0, "kept": "all (budget >= 16)"}
        bits = bits_for_budget(float(budget), group_size)
        budget_bits = float(budget)
    default = QuantSpec(bits=int(bits), grid=grid, p=p, group_size=group_size,
                        scale=scale or ("rms" if grid == "normal" else "absmax"))
    g = graph.copy()
    rows, kept, items = {}, [], []
    for node in [n for n in g.nodes if n.op == "linear"]:
        layer = node.attrs.get("layer") or node.name
        quant = node.attrs.get("quant") or {}
        w = g.param(node.args[1])
        if quant.get("keep"):  # allocated 16 bits: counted in the budget at 16
            rows[node.name] = {"layer": layer, "n": int(w.shape[0]), "k": int(w.shape[1]), "numel": int(w.numel()),
                               "spec": "keep-f16", "bits_per_weight": 16.0, "rel_mse": 0.0}
            continue
        if not quant and matches(layer, skip):
            kept.append(layer)
            continue
        if w.dim() != 2:
            raise NodeError(node, f"linear weight must be 2-D, got {tuple(w.shape)}")
        spec = QuantSpec.from_dict(quant["spec"]) if quant.get("spec") else default
        if budget_bits is not None and not quant.get("spec"):
            spec = within_budget(spec, int(w.shape[1]), budget_bits)
        rows[node.name] = None  # keeps graph order
        items.append((node, spec))
    hessians: dict[str, torch.Tensor] = {}
    groups = _hessian_groups(items, g, 0.0 if sequential else hessian_gb * 2**30) if gptq and items else [[]]
    batches = [b if isinstance(b, tuple) else (b,) for b in calibration] if gptq else []
    for group in groups:
        if group:  # one calibration run per group of Hessians, on float weights (or those quantized so far)
            hessians = collect_hessians(g if sequential else graph, group, batches, device=ctx.options.get("device"))
        for node, spec in items:
            if gptq and node.args[0].name not in hessians:
                continue
            try:
                _, row = quantize_linear(g, node, spec, hessians.get(node.args[0].name) if gptq else None, damp, block,
                                         act_order)
            except ValueError as e:
                raise NodeError(node, str(e)) from e
            rows[node.name] = row
        hessians.clear()
    rows = list(rows.values())
    numel = sum(r["numel"] for r in rows)
    avg = sum(r["numel"] * r["bits_per_weight"] for r in rows) / numel if numel else 0.0
    ctx.artifacts["layers"] = rows
    ctx.artifacts["kept_float"] = kept
    stats = {"quantized": sum(r["spec"] != "keep-f16" for r in rows), "kept_float": kept, "average_bits": round(avg, 4),
             "quantized_numel": numel, "gptq": bool(gptq)}
    if gptq and items:
        stats["hessian_runs"] = len(groups)
        stats["calibration_batches"] = len(batches)
    return g, stats
