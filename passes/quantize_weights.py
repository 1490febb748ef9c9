"""quantize: replace each linear by a qlinear holding packed codes, scales and a lookup table.

The spec of a layer comes from `node.attrs["quant"]` when allocate-bits set it ({"spec": {...}} or
{"keep": true}), else from the pass options (grid, bits, group_size, scale, p) — with `bits` derived
from the compile budget when not given: the most bits b with b + 16/group <= budget (uniform RTN, the
pipeline's default until allocate-bits runs). Layers matching `skip` (comma-separated names; default
"lm_head") stay float and are not counted in the budget; layers the allocator keeps at 16 bits are
reported at 16 bits per weight. A group size that does not divide in_features falls back to the largest
power-of-two divisor >= 16, else per-channel. When bits come from the budget, a layer whose fallback group
would exceed it goes per-channel, or one bit lower if even that does not fit; the choice is recorded per layer.
"""
from __future__ import annotations

import fnmatch
import math

import torch

from qcomp.codegen.packing import pack_codes
from qcomp.numerics.quant_spec import QuantSpec
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


def quantize_linear(g: Graph, node: Node, spec: QuantSpec) -> tuple[Node, dict]:
    """Replace linear `node` in g by a qlinear with `spec`; returns the new node and its report row."""
    w = g.param(node.args[1])
    n, k = w.shape
    spec = fit_group(spec, k)
    q = quantize_weight(w.to(torch.float32), spec)
    err = relative_mse(w, dequantize_weight(q, spec))
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
           "bits_per_weight": spec.bits_per_weight(k=k, numel=n * k), "rel_mse": err}
    return g.node(node.name), row


@register_pass("quantize")
def quantize(graph: Graph, ctx: PassContext, bits: int | None = None, grid: str = "uniform", group_size: int = 128,
             scale: str | None = None, p: int = 1, skip: str = "lm_head"):
    """Quantize every linear (except `skip`) to its allocated spec or the default spec."""
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
    rows, kept = [], []
    for node in [n for n in g.nodes if n.op == "linear"]:
        layer = node.attrs.get("layer") or node.name
        quant = node.attrs.get("quant") or {}
        w = g.param(node.args[1])
        if quant.get("keep"):  # allocated 16 bits: counted in the budget at 16
            rows.append({"layer": layer, "n": int(w.shape[0]), "k": int(w.shape[1]), "numel": int(w.numel()),
                         "spec": "keep-f16", "bits_per_weight": 16.0, "rel_mse": 0.0})
            continue
        if not quant and matches(layer, skip):
            kept.append(layer)
            continue
        if w.dim() != 2:
            raise NodeError(node, f"linear weight must be 2-D, got {tuple(w.shape)}")
        spec = QuantSpec.from_dict(quant["spec"]) if quant.get("spec") else default
        if budget_bits is not None and not quant.get("spec"):
            spec = within_budget(spec, int(w.shape[1]), budget_bits)
        try:
            _, row = quantize_linear(g, node, spec)
        except ValueError as e:
            raise NodeError(node, str(e)) from e
        rows.append(row)
    numel = sum(r["numel"] for r in rows)
    avg = sum(r["numel"] * r["bits_per_weight"] for r in rows) / numel if numel else 0.0
    ctx.artifacts["layers"] = rows
    ctx.artifacts["kept_float"] = kept
    return g, {"quantized": sum(r["spec"] != "keep-f16" for r in rows), "kept_float": kept, "average_bits": round(avg, 4), "quantized_numel": numel}
