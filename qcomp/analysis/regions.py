"""Rotation regions: maximal sets of values that can all carry `x @ Q` instead of `x` (QuaRot-style).

Starting from a seed value (an embedding or linear output), `find_region` grows the set through
transparent ops (see `lastdim`), in both directions: a transparent op joins with all its tensor inputs
and its output. Then every edge leaving the set is classified:

* producers of members: an `embedding` (rotate the table's rows), a `linear` (rotate its output side:
  W -> Qᵀ W, b -> b Q), a `param` (rotate the tensor) absorb Q offline; anything else is an *entry*
  that needs an online `rotate` after it;
* users of members: a `linear` reading a member absorbs Q on its input side (W -> W Q); a forward
  `rotate` equal to Q becomes the identity (an online rotation removed); anything else is an *exit*
  that needs an online inverse rotation before it. A weighted RMSNorm is transparent when its weight can
  be folded into the linears it feeds (`norm_fold_sinks`), otherwise it is an exit.

`Region.gain` = online rotations removed - online rotations added; fuse-hadamard applies regions with a
positive gain. For a Llama-like decoder the region of the embedding is the whole residual stream with
no entries or exits; for BERT, LayerNorm bounds every region, which then costs more than it saves.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from qcomp.qir import Graph, Node, Ref

from .lastdim import is_metadata_use, is_rotation_sink, is_transparent, last_dim, norm_fold_sinks, tensor_inputs

ABSORBING_PRODUCERS = ("embedding", "linear", "param")


@dataclass
class Region:
    dim: int
    members: list[str] = field(default_factory=list)            # values that will carry x @ Q (graph order)
    producers: dict[str, str] = field(default_factory=dict)     # member -> embedding|linear|param|transparent|entry
    readers: list[str] = field(default_factory=list)            # linears reading a member directly
    rotates: list[str] = field(default_factory=list)            # forward rotate nodes reading a member
    exits: dict[str, list[str]] = field(default_factory=dict)   # member -> users that need x back
    norm_folds: dict[str, list[tuple[str, list[str]]]] = field(default_factory=dict)  # norm -> [(linear, rotates)]
    size: int | None = None
    seed: int | None = None

    @property
    def entries(self) -> list[str]:
        return [m for m in self.members if self.producers[m] == "entry"]

    def absorbed_rotates(self, g: Graph) -> list[str]:
        return [r for r in self.rotates if _rot_key(g.node(r)) == (self.size, self.seed)]

    def foreign_rotates(self, g: Graph) -> list[str]:
        return [r for r in self.rotates if _rot_key(g.node(r)) != (self.size, self.seed)]

    def cost(self, g: Graph) -> int:
        """Online rotations the region adds: one per entry, one per member with exits (or foreign rotates).

        Exits of an entry read the value before its rotation and cost nothing."""
        exiting = {m for m, us in self.exits.items() if us}
        exiting |= {g.node(r).args[0].name for r in self.foreign_rotates(g)}
        return len(self.entries) + len(exiting - set(self.entries))

    def gain(self, g: Graph) -> int:
        return len(self.absorbed_rotates(g)) - self.cost(g)

    def summary(self, g: Graph) -> dict:
        kinds = Counter(self.producers.values())
        return {"dim": self.dim, "size": self.size, "seed": self.seed, "members": len(self.members),
                "embeddings": kinds["embedding"], "writers": kinds["linear"], "params": kinds["param"],
                "readers": len(self.readers), "norms_folded": len(self.norm_folds),
                "online_removed": len(self.absorbed_rotates(g)), "online_added": self.cost(g), "entries": self.entries,
                "exits": sorted({u for us in self.exits.values() for u in us})}


def _rot_key(node: Node) -> tuple:
    return node.attrs.get("size"), node.attrs.get("seed")


def _is_forward_rotate(node: Node, value: str) -> bool:
    return node.op == "rotate" and not node.attrs.get("inverse", False) and node.args[0] == Ref(value)


def find_region(g: Graph, seed: str, users: dict[str, list[Node]] | None = None) -> Region | None:
    """The region grown from value `seed`, or None when the seed has no static last dim."""
    d = last_dim(g, seed)
    if d is None:
        return None
    users = users if users is not None else g.users()
    region = Region(dim=d)
    members: set[str] = set()
    folds: dict[str, list | None] = {}

    def transparent(node: Node) -> bool:
        if node.op == "norm" and node.attrs.get("kind") == "rms" and last_dim(g, node.name) == d:
            if is_transparent(g, node, d):
                return True
            if node.name not in folds:
                sinks = norm_fold_sinks(g, node, users)
                bias = len(node.args) > 2 and node.args[2] is not None
                folds[node.name] = None if bias or sinks is None else sinks
            return folds[node.name] is not None
        return is_transparent(g, node, d)

    queue = [seed]
    while queue:
        v = queue.pop()
        if v in members:
            continue
        members.add(v)
        node = g.node(v)
        if node.op in ("embedding", "linear"):
            region.producers[v] = node.op
        elif node.op == "param" and all(is_metadata_use(u) or transparent(u) for u in users[v]):
            region.producers[v] = "param"  # read only through transparent ops: rotate the tensor itself
        elif transparent(node):
            region.producers[v] = "transparent"
            ins = [node.args[0]] if node.op == "norm" else tensor_inputs(g, node)
            queue.extend(r.name for r in ins)
        else:
            region.producers[v] = "entry"
        for u in users[v]:
            if is_metadata_use(u):
                continue
            if is_rotation_sink(g, u, v):
                if u.name not in region.readers:
                    region.readers.append(u.name)
            elif _is_forward_rotate(u, v):
                if u.name not in region.rotates:
                    region.rotates.append(u.name)
            elif transparent(u):
                queue.append(u.name)
            else:
                region.exits.setdefault(v, []).append(u.name)
    order = {n.name: i for i, n in enumerate(g.nodes)}
    region.members = sorted(members, key=order.__getitem__)
    region.norm_folds = {n: [(lin.name, [r.name for r in rots]) for lin, rots in sinks]
                         for n, sinks in folds.items() if sinks is not None and n in members}
    return region


def choose_rotation(g: Graph, region: Region, default_size: int, default_seed) -> None:
    """Use the rotation most of the region's forward rotates already apply (so they vanish), else the default."""
    keys = Counter(_rot_key(g.node(r)) for r in region.rotates if region.dim % (g.node(r).attrs.get("size") or 0) == 0)
    region.size, region.seed = keys.most_common(1)[0][0] if keys else (default_size, default_seed)
