"""insert-hadamard: give every linear to be quantized a block-Hadamard basis, keeping the float function.

For each `linear` that the quantize pass will quantize (not matching `skip`, not marked
`quant: {keep: true}`), with in_features K:

* block size h = choose_block_size(K, max_block) (the largest block with a Hadamard matrix dividing K);
* the weight is rotated offline: W -> W Q with Q = blockdiag(D_s H_h) (a new tensor; a weight shared
  with another node, e.g. a tied embedding, is copied first so the other reader is unchanged);
* an online `rotate(x) {size: h, seed, inverse: False}` is put on the input; linears reading the same
  value with the same rotation share one rotate node;
* the linear records `hadamard: {size: h, seed, online: True}` (its weight is in the rotated basis and
  its input is rotated by a rotate node right in front of it). fuse-hadamard later sets online: False
  where it absorbs that rotate into the graph.

Since (x Q)(W Q)ᵀ = x Wᵀ, outputs are unchanged up to rounding. A layer whose K admits no block > 1
is left as is and reported. Stats: rotated layers, block sizes by K, online rotations, skipped layers.
"""
from __future__ import annotations

from qcomp.analysis.rewrite import ParamRewriter, add_rotate, rotate_last
from qcomp.pass_manager import NodeError, PassContext, register_pass
from qcomp.qir import Graph, Ref

from .quantize_weights import matches


@register_pass("insert-hadamard")
def insert_hadamard(graph: Graph, ctx: PassContext, max_block: int = 1024, seed: int = 0, skip: str = "lm_head"):
    """Rotate each to-be-quantized linear's weight offline and its input online by a block Hadamard."""
    from qcomp.numerics.hadamard import choose_block_size

    g = graph.copy()
    params = ParamRewriter(g)
    rotates: dict[tuple, str] = {}
    sizes: dict[int, int] = {}
    rotated, skipped, no_block = [], [], []
    for node in [n for n in g.nodes if n.op == "linear"]:
        layer = node.attrs.get("layer") or node.name
        quant = node.attrs.get("quant") or {}
        if quant.get("keep") or (not quant and matches(layer, skip)) or node.attrs.get("hadamard"):
            skipped.append(layer)
            continue
        w = g.param(node.args[1])
        if w.dim() != 2:
            raise NodeError(node, f"linear weight must be 2-D, got {tuple(w.shape)}")
        k = int(w.shape[1])
        try:
            h = int(choose_block_size(k, max_block=max_block))
        except ValueError as e:
            raise NodeError(node, f"no Hadamard block for in_features {k}: {e}") from e
        if h <= 1:
            no_block.append(layer)
            continue
        params.apply(node, 1, ("rows", h, seed), lambda t, h=h: rotate_last(t, h, seed), "rot")
        x = node.args[0]
        if not isinstance(x, Ref):
            raise NodeError(node, "linear input must be a value")
        key = (x.name, h, seed)
        if key not in rotates:
            rotates[key] = add_rotate(g, x.name, h, seed, False, before=node).name
        node.args = (Ref(rotates[key]),) + tuple(node.args[1:])
        node.attrs["hadamard"] = {"size": h, "seed": seed, "online": True}
        sizes[k] = h
        rotated.append(layer)
    return g, {"rotated": len(rotated), "online_rotations": len(rotates), "block_sizes": {str(k): h for k, h in sizes.items()},
               "skipped": skipped, "no_block": no_block}
