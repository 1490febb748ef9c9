"""Property test: insert-hadamard + fuse-hadamard keep the float64 function of random residual models
(hidden sizes with Paley-type Hadamard blocks, tied or untied heads, random seeds and block caps)."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from test_pass_hadamard import TOL, check_equivalence, rotated_layers


class Block(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.qkv, self.o = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=True)
        self.up, self.down = nn.Linear(d, hidden, bias=False), nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        x = x + self.o(torch.tanh(self.qkv(self.norm1(x))))
        return x + self.down(torch.relu(self.up(self.norm2(x))))


class ResidualModel(nn.Module):
    def __init__(self, vocab: int, d: int, hidden: int, n_blocks: int, tied: bool, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, hidden) for _ in range(n_blocks))
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.head.weight = self.emb.weight
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.RMSNorm):
                    m.weight.uniform_(0.5, 1.5)

    def forward(self, ids):
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


@settings(max_examples=12, deadline=None)
@given(d=st.sampled_from([16, 24, 40, 48, 56]), hidden=st.sampled_from([32, 48, 80]), n_blocks=st.integers(1, 2),
       tied=st.booleans(), seed=st.integers(0, 2**16), max_block=st.sampled_from([8, 16, 1024]),
       skip=st.sampled_from(["lm_head", ""]))
def test_insert_and_fuse_keep_the_function(d, hidden, n_blocks, tied, seed, max_block, skip):
    from qcomp.runtime import reference

    from test_pass_hadamard import _rms_norm_f64

    original, reference.rms_norm_reference = reference.rms_norm_reference, _rms_norm_f64
    try:
        ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(seed))
        model = ResidualModel(50, d, hidden, n_blocks, tied, seed)
        r = check_equivalence(model, (ids,), capture="fx", insert={"max_block": max_block, "seed": seed % 7, "skip": skip},
                              fuse={"max_block": max_block, "seed": seed % 7})
    finally:
        reference.rms_norm_reference = original
    assert r["err_insert"] < TOL and r["err_fuse"] < TOL, (r["err_insert"], r["err_fuse"])
    # the residual stream is one region: only the rotations in front of o and down stay online
    assert rotated_layers(r["fuse"]) == sorted(f"blocks.{i}.{m}" for i in range(n_blocks) for m in ("down", "o"))
    assert r["fuse_stats"]["online_after"] == 2 * n_blocks
