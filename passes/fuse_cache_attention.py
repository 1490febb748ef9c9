"""fuse-cache-attention: attention over a KV cache updated in the same step reads the new row instead of a copy.

    %kc = call(%k_cache_i, 2, %pos, %k_new) {target: "aten.index_copy.default"}      (a full copy of the cache)
    %vc = call(%v_cache_i, 2, %pos, %v_new) {target: "aten.index_copy.default"}
    %y  = attention(%q, %kc, %vc, %mask) {target: "aten.scaled_dot_product_attention.default"}
  ->
    %y  = attention(%q, %k_cache_i, %v_cache_i, %k_new, %v_new, %pos, %mask, scale)
          {target: "qcomp.cached_attention.default"}

A functional decode step (qcomp.static_decode.StaticDecodeStep, or any graph that writes this step's key and
value into its cache with index_copy and attends over the result) copies each layer's whole cache once per step
only to attend over it. torch.ops.qcomp.cached_attention computes the same attention without the copy: its decode
kernel reads position pos from k_new / v_new and every other position from the cache (codegen/attention.py);
where the kernel does not apply it does the index_copy and torch's attention, as before.

Applies when both key and value are such index_copy nodes along the sequence dim (2 of 4) at the same index,
reached from the attention directly or through dtype conversions that change nothing (fx captures keep
`.to(dtype)` nodes), when the copies feed nothing else, and when the attention has no dropout, no is_causal and no
enable_gqa. Run anywhere after capture; the default pipeline runs it right after canonicalize. Stats: attentions
fused, and the attentions left alone with the reason. (torch.ops.qcomp.cached_attention registers itself when a
graph naming it is run: qcomp.qir.targets.resolve_target.)
"""
from __future__ import annotations

from qcomp.pass_manager import PassContext, register_pass
from qcomp.qir import Graph, Node, Ref
from qcomp.qir.types import TensorType

_SDPA = ("aten.scaled_dot_product_attention.default", "torch.nn.functional.scaled_dot_product_attention",
         "torch._C._nn.scaled_dot_product_attention")
_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
TARGET = "qcomp.cached_attention.default"


def _base(node: Node) -> str | None:
    """The op's plain name: 'index_copy' for call_method index_copy, aten.index_copy.default, torch.index_copy."""
    t = node.target
    if not isinstance(t, str) or node.op not in ("call", "call_method"):
        return None
    if node.op == "call_method":
        return t
    parts = t.split(".")
    return parts[1] if parts[0] in ("aten", "prims") and len(parts) == 3 else parts[-1]


def _dtype(node: Node):
    return node.type.dtype if isinstance(node.type, TensorType) else None


def _skip_noop_to(g: Graph, ref, chain: list) -> Node | None:
    """The node behind `ref`, past `.to(...)` conversions whose result has its input's dtype (appended to chain)."""
    if not isinstance(ref, Ref):
        return None
    node = g.node(ref)
    while _base(node) in ("to", "_to_copy") and node.args and isinstance(node.args[0], Ref):
        src = g.node(node.args[0])
        if _dtype(node) is None or _dtype(node) != _dtype(src):
            return node
        chain.append(node)
        node = src
    return node


def _sdpa_params(node: Node) -> dict:
    p = dict(zip(_SDPA_PARAMS, node.args))
    p.update({k: v for k, v in node.kwargs.items() if k in _SDPA_PARAMS})
    return p


def _why_not(g: Graph, node: Node, users: dict) -> tuple[str | None, dict]:
    """(None, parts) if `node` can become a cached attention, else (reason, {})."""
    p = _sdpa_params(node)
    if set(node.kwargs) - set(_SDPA_PARAMS):
        return f"unknown attention arguments {sorted(set(node.kwargs) - set(_SDPA_PARAMS))}", {}
    if p.get("dropout_p", 0.0) or p.get("is_causal", False) or p.get("enable_gqa", False):
        return "dropout, is_causal or enable_gqa", {}
    chain: list[Node] = []
    copies = [_skip_noop_to(g, p.get(name), chain) for name in ("key", "value")]
    if any(c is None or _base(c) != "index_copy" or len(c.args) != 4 for c in copies):
        return "key and value are not index_copy results", {}
    (kc, vc) = copies
    if any(c.args[1] not in (2, -2) or not isinstance(c.type, TensorType) or len(c.type.shape) != 4 for c in copies):
        return "index_copy is not along the sequence dim of a 4-D cache", {}
    if kc.args[2] != vc.args[2] or not isinstance(kc.args[2], Ref):
        return "key and value rows are written at different indices", {}
    for n in copies + chain:
        if any(u is not node and u not in chain for u in users[n.name]):
            return f"%{n.name} has other users", {}
    return None, {"copies": copies, "chain": chain, "params": p}


@register_pass("fuse-cache-attention")
def fuse_cache_attention(graph: Graph, ctx: PassContext):
    """Attention over index_copy'd caches -> qcomp.cached_attention (see the module docstring)."""
    g = graph.copy()
    fused, apart = 0, {}
    for node in list(g.nodes):
        if node.op != "attention" or node.target not in _SDPA:
            continue
        why, parts = _why_not(g, node, g.users())
        if why:
            apart[node.name] = why
            continue
        (kc, vc), p = parts["copies"], parts["params"]
        node.args = (p["query"], kc.args[0], vc.args[0], kc.args[3], vc.args[3], kc.args[2], p.get("attn_mask"),
                     p.get("scale"))
        node.kwargs = {}
        node.attrs["target"] = TARGET
        for n in parts["chain"] + [kc, vc]:  # used by this attention alone (checked); the key and value may be one
            if n.name in g:
                g.erase(n)
        fused += 1
    return g, {"attentions_fused": fused, "attentions_apart": apart}
