"""fuse-hadamard: remove the online rotations that can be absorbed into weights, keeping the float function.

1. Peepholes: a rotate followed by its inverse (same size and seed) cancels; identical rotates of the
   same value merge; unused rotates go.
2. Rotated regions (QuaRot-style, `residual=True`): `qcomp.analysis.regions` grows, from each embedding
   and linear output, the set of values that can carry x @ Q, through ops that commute with an
   orthogonal transform of the last dim (residual adds, layout ops, RMSNorm without weight). Weighted
   RMSNorms inside a region first get their weight folded into the linears they feed (norm weight ->
   None, W -> W diag(w)). Then Q is absorbed offline: embedding tables and param tensors E -> E Q,
   linears writing into the region (o_proj, down_proj) W -> Qᵀ W and b -> b Q (attr `hadamard_out`),
   linears reading it (q/k/v, gate/up, lm_head) W -> W Q; the forward rotates that fed readers with
   the same Q disappear (attr `hadamard.online` -> False). Values entering the region from an op that
   cannot absorb Q get an online rotate, uses leaving it towards such an op an online inverse rotate;
   a region is applied only if it removes more online rotations than it adds.

   For a Llama-like decoder the residual stream is one region with no entries or exits: after
   insert-hadamard + fuse-hadamard only the rotations before down_proj and o_proj stay online (the
   per-head rotation of o_proj is not absorbed into v_proj). Tied embeddings: the shared table is
   rotated once when both readers need the same transform and split otherwise (ParamRewriter).

   LayerNorm (BERT, MiniLM) is not rotation-invariant (the mean subtraction does not commute with Q), so
   it bounds every region; each such region would need an online rotate after and an inverse rotate
   before each LayerNorm, which costs at least what it saves, so for these models fuse-hadamard keeps
   insert-hadamard's online rotations (after the peepholes).

Accuracy: the float function is unchanged, but folding RMSNorm weights moves where a data-free quantizer's
error lands; on SmolLM2-135M with Gaussian grids, `residual=False` (keep per-linear online rotations) gives
lower perplexity than the full fusion (benchmarks/RESULTS_rotation.md). The fusion halves online rotations.

Stats: online rotations before/after, pairs cancelled, merged, per applied region a summary, rejected
regions with their gain.
"""
from __future__ import annotations

import torch

from qcomp.analysis.regions import Region, choose_rotation, find_region
from qcomp.analysis.rewrite import ParamRewriter, add_rotate, count_online, rotate_first, rotate_last
from qcomp.pass_manager import PassContext, register_pass
from qcomp.qir import Graph, Node, Ref


def _same_rotation(a: Node, b: Node) -> bool:
    return a.attrs.get("size") == b.attrs.get("size") and a.attrs.get("seed") == b.attrs.get("seed")


def simplify_rotations(g: Graph) -> dict:
    """Cancel rotate/inverse pairs, merge duplicate rotates, drop unused ones (in place)."""
    cancelled = merged = dead = 0
    seen: dict[tuple, str] = {}
    for n in list(g.nodes):
        if n.op != "rotate" or n.name not in g:
            continue
        src = g.node(n.args[0])
        if src.op == "rotate" and _same_rotation(n, src) and bool(src.attrs.get("inverse")) != bool(n.attrs.get("inverse")):
            g.replace_uses(n.name, src.args[0])
            g.erase(n)
            cancelled += 1
            if not g.users()[src.name]:
                g.erase(src)
            continue
        key = (n.args[0].name, n.attrs.get("size"), n.attrs.get("seed"), bool(n.attrs.get("inverse")))
        if key in seen and seen[key] in g:
            g.replace_uses(n.name, Ref(seen[key]))
            g.erase(n)
            merged += 1
        else:
            seen[key] = n.name
    uses = {n.name: 0 for n in g.nodes}
    for n in g.nodes:
        for r in {r.name for r in n.refs()}:
            uses[r] += 1
    for n in reversed(list(g.nodes)):
        if n.op == "rotate" and uses[n.name] == 0:
            uses[n.args[0].name] -= 1
            g.erase(n)
            dead += 1
    return {"pairs_cancelled": cancelled, "merged": merged, "dead_removed": dead}


def _fold_fn(w: torch.Tensor, chain: list[tuple[int, object]]):
    """W -> W Cᵀ diag(w) C, C = the rotations on the path from the norm to the linear."""

    def fn(weight: torch.Tensor) -> torch.Tensor:
        t = weight.to(torch.float64)
        for size, seed in reversed(chain):
            t = rotate_last(t, size, seed, inverse=True)
        t = t * w.to(torch.float64)
        for size, seed in chain:
            t = rotate_last(t, size, seed)
        return t.to(weight.dtype)

    return fn


def apply_region(g: Graph, region: Region, params: ParamRewriter) -> None:
    """Rotate every value of `region` by its Q (region.size, region.seed), keeping the float function."""
    h, s = region.size, region.seed
    exits = {m: list(us) for m, us in region.exits.items()}
    for r in region.foreign_rotates(g):
        exits.setdefault(g.node(r).args[0].name, []).append(r)
    # 1. fold RMSNorm weights into the linears they feed (norms become weightless, hence transparent)
    for norm_name, sinks in region.norm_folds.items():
        norm = g.node(norm_name)
        w_ref, w = norm.args[1], g.param(norm.args[1])
        for lin, rots in sinks:
            chain = [(g.node(r).attrs["size"], g.node(r).attrs.get("seed")) for r in rots]
            key = ("fold", g.node(w_ref).attrs["target"], tuple(chain))
            params.apply(g.node(lin), 1, key, _fold_fn(w, chain), "fold")
        params.clear(norm, 1)
    # 2. producers absorb Q on their output side (entries get an online rotate)
    for m in region.members:
        node, kind = g.node(m), region.producers[m]
        if kind == "embedding":
            params.apply(node, 0, ("rows", h, s), lambda t: rotate_last(t, h, s), "rot")
        elif kind == "linear":
            params.apply(node, 1, ("cols", h, s), lambda t: rotate_first(t, h, s), "rot_out")
            if len(node.args) > 2 and isinstance(node.args[2], Ref):
                params.apply(node, 2, ("rows", h, s), lambda t: rotate_last(t, h, s), "rot")
            node.attrs["hadamard_out"] = {"size": h, "seed": s}
        elif kind == "param":
            target = new_target = node.attrs["target"]
            if sum(n.op == "param" and n.attrs["target"] == target for n in g.nodes) > 1:
                new_target = next(f"{target}.rot{i or ''}" for i in range(len(g.params) + 1) if f"{target}.rot{i or ''}" not in g.params)
            g.params[new_target] = rotate_last(g.params[target], h, s)
            node.attrs["target"] = new_target
        elif kind == "entry":
            after = g.nodes[g._index(node) + 1]
            rot = add_rotate(g, m, h, s, False, before=after)
            keep = set(exits.get(m, ())) | {rot.name}
            for u in g.nodes:
                if u.name not in keep:
                    u.map_refs(lambda r: Ref(rot.name) if r.name == m else r)
    # 3. readers absorb Q on their input side; rotates equal to Q vanish
    for name in region.readers:
        node = g.node(name)
        params.apply(node, 1, ("rows", h, s), lambda t: rotate_last(t, h, s), "rot")
        node.attrs["hadamard"] = {"size": h, "seed": s, "online": False}
    for r in region.absorbed_rotates(g):
        for u in g.users()[r]:
            if u.op == "linear" and u.attrs.get("hadamard"):
                u.attrs["hadamard"] = {**u.attrs["hadamard"], "online": False}
        g.replace_uses(r, g.node(r).args[0])
        g.erase(g.node(r))
    # 4. exits get x back through an online inverse rotation
    order = {n.name: i for i, n in enumerate(g.nodes)}
    for m, users in exits.items():
        if region.producers[m] == "entry" or not users:
            continue
        first = min((g.node(u) for u in users), key=lambda n: order[n.name])
        inv = add_rotate(g, m, h, s, True, before=first)
        for u in users:
            g.node(u).map_refs(lambda r: Ref(inv.name) if r.name == m else r)


def _seeds(g: Graph) -> list[str]:
    return [n.name for n in g.nodes if n.op == "embedding"] + [n.name for n in g.nodes if n.op == "linear"]


@register_pass("fuse-hadamard")
def fuse_hadamard(graph: Graph, ctx: PassContext, residual: bool = True, max_block: int = 1024, seed: int = 0):
    """Cancel rotate pairs and absorb rotations of residual-stream-like regions into weights."""
    from qcomp.numerics.hadamard import choose_block_size

    g = graph.copy()
    before = count_online(g)
    stats = simplify_rotations(g)
    applied, rejected = [], []
    if residual:
        params = ParamRewriter(g)
        done: set[str] = set()
        users = g.users()
        for seed_value in _seeds(g):
            if seed_value in done or seed_value not in g:
                continue
            region = find_region(g, seed_value, users)
            if region is None:
                continue
            done.update(region.members)
            choose_rotation(g, region, int(choose_block_size(region.dim, max_block=max_block)), seed)
            rotated_already = [r for r in region.readers if g.node(r).attrs.get("hadamard")] + \
                [m for m in region.members if region.producers[m] == "linear" and g.node(m).attrs.get("hadamard_out")]
            gain = region.gain(g)
            if gain <= 0 or region.size <= 1 or rotated_already:
                why = "already rotated" if rotated_already else f"gain {gain}"
                rejected.append({"seed": seed_value, "members": len(region.members), "why": why})
                continue
            applied.append(region.summary(g))
            apply_region(g, region, params)
            users = g.users()
        again = simplify_rotations(g)
        stats = {k: stats[k] + again[k] for k in stats}
    stats.update({"online_before": before, "online_after": count_online(g), "regions": applied,
                  "rejected_regions": rejected[:20], "n_rejected": len(rejected)})
    return g, stats
