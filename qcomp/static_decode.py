"""A static-shape decoder step for Llama-architecture Hugging Face models, for CUDA-graph decoding.

    step = StaticDecodeStep(hf_llama, max_len=512)
    logits, k_cache, v_cache = step(input_ids [B, 1], pos [1] int64, k_cache, v_cache)

k_cache / v_cache: [L, B, H_kv, max_len, D]. The step writes the new key/value at `pos` (functional
index_copy, so the captured graph has no mutation), attends over positions <= pos with a mask, and
returns the next-token logits. Every shape is fixed, so `qcomp.compile(step, ...)` gives a graph whose
executor can be captured once as a CUDA graph and replayed per token. Layer names stay the Hugging Face
names (`model.layers.3.mlp.down_proj`): the step holds the LM's `model` and `lm_head` under those names.
The step reuses the LM's own modules (embeddings, norms, projections, rotary embedding, MLP) and only
re-writes the attention glue; `check_against(lm)` verifies it token by token against the LM's forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class StaticDecodeStep(nn.Module):
    def __init__(self, lm: nn.Module, max_len: int = 512):
        super().__init__()
        cfg = lm.config
        if getattr(cfg, "model_type", None) not in ("llama", "mistral", "qwen2"):
            raise ValueError(f"StaticDecodeStep supports Llama-architecture models, got {getattr(cfg, 'model_type', None)!r}")
        self.model = lm.model
        self.lm_head = lm.lm_head
        self.config = cfg
        self.max_len = int(max_len)
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads

    def cache_shape(self, batch: int) -> tuple[int, ...]:
        return (self.n_layers, batch, self.n_kv, self.max_len, self.head_dim)

    def new_cache(self, batch: int, device=None, dtype=None):
        p = next(self.parameters())
        shape = self.cache_shape(batch)
        z = torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype)
        return z, z.clone()

    def forward(self, input_ids, pos, k_cache, v_cache):
        b = input_ids.shape[0]
        x = self.model.embed_tokens(input_ids)  # [B, 1, H]
        position_ids = pos.view(1, 1).expand(b, 1)
        cos, sin = self.model.rotary_emb(x, position_ids)  # [B, 1, D]
        cos, sin = cos[:, None], sin[:, None]
        valid = (torch.arange(self.max_len, device=pos.device) <= pos).view(1, 1, 1, self.max_len)
        new_k, new_v = [], []
        for i, layer in enumerate(self.model.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, 1, self.n_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(b, 1, self.n_kv, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(b, 1, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k, v = k.to(k_cache.dtype), v.to(v_cache.dtype)
            kc = k_cache[i].index_copy(2, pos, k)
            vc = v_cache[i].index_copy(2, pos, v)
            new_k.append(k)
            new_v.append(v)
            # grouped-query attention without repeating the cache: the rep query heads of one kv head attend as rep
            # query rows of that head ([B, H, 1, D] -> [B, H_kv, rep, D]; head h reads kv head h // rep, as
            # repeat_interleave would give), so the cache is read once per kv head and never copied
            rep = self.n_heads // self.n_kv
            qg = q.reshape(b, self.n_kv, rep, self.head_dim)
            y = F.scaled_dot_product_attention(qg, kc.to(q.dtype), vc.to(q.dtype), attn_mask=valid)
            x = x + attn.o_proj(y.reshape(b, 1, self.n_heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.lm_head(self.model.norm(x))
        # the updated caches: this step's rows of every layer written at pos in one copy each (stacking the
        # per-layer updated caches would copy every layer's cache twice)
        return logits, k_cache.index_copy(3, pos, torch.stack(new_k)), v_cache.index_copy(3, pos, torch.stack(new_v))

    @torch.no_grad()
    def check_against(self, lm: nn.Module, ids: torch.Tensor, atol: float = 1e-3) -> float:
        """Feed ids token by token; return the max abs logit difference to lm(ids) (raises if > atol·scale)."""
        ref = lm(ids, use_cache=False).logits
        kc, vc = self.new_cache(ids.shape[0])
        worst = 0.0
        for t in range(ids.shape[1]):
            logits, kc, vc = self(ids[:, t : t + 1], torch.tensor([t], device=ids.device), kc, vc)
            worst = max(worst, (logits[:, 0] - ref[:, t]).abs().max().item())
        scale = ref.abs().max().item()
        if worst > atol * max(scale, 1.0):
            raise AssertionError(f"static decode step differs from the model: max |Δlogit| {worst:.3g} (scale {scale:.3g})")
        return worst
