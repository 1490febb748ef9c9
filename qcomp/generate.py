"""Text generation with a KV cache that runs the graph qcomp compiled (never the float model).

    gen = qcomp.generate.compile_for_generation(hf_causal_lm, budget=4.0)
    ids = gen.generate(prompt_ids, max_new_tokens=32)                       # greedy
    ids = gen.generate(prompt_ids, 32, do_sample=True, temperature=0.8, top_k=50, seed=0)
    text, n_new = gen.generate_text(tokenizer, "Once upon a time", max_new_tokens=32)

How: `DecoderStep` wraps a Hugging Face causal LM as one step with explicit cache tensors,

    forward(input_ids [B, T], past_k [L, B, H_kv, S, D], past_v [L, B, H_kv, S, D])
        -> (logits [B, T, V], k [L, B, H_kv, S+T, D], v [L, B, H_kv, S+T, D])

building a transformers DynamicCache from the tensors inside forward; positions are S..S+T-1. The
step is captured with torch.export (batch, T and S dynamic) and compiled by `qcomp.compile` with the
caller's pipeline and budget, so prefill (S = 0, T = prompt length) and decode (T = 1) both execute
the compiled graph. The wrapper holds the LM's decoder and head under the LM's own attribute names
(e.g. `model`, `lm_head`), so layer names in the compiled graph are the Hugging Face module names
(`model.layers.3.mlp.down_proj`), exactly as when compiling the LM itself.

Static cache (fast decoding): `compile_for_generation(lm, budget, max_len=N)` compiles
`qcomp.static_decode.StaticDecodeStep` instead (Llama-architecture models: one token per step, a KV cache
of N positions, every shape fixed) and returns a `StaticGenerator`: the prompt is fed one token at a time,
and on CUDA the executor captures the step once as a CUDA graph and replays it for every token (no
per-node Python, no re-allocation). Its batch size is the one it was compiled for (`batch=`).

Limits: batches are unpadded (all prompts of one batch have the same length; no attention mask);
the dynamic cache grows by concatenation; models whose logits need more than
`lm_head(last_hidden_state)` (soft-capping, logit scaling) are refused when the wrapper is built,
because the wrapper is checked against the model's own logits.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn


class GenerationError(RuntimeError):
    pass


def _child_name(parent: nn.Module, child: nn.Module) -> str:
    for name, m in parent.named_children():
        if m is child:
            return name
    raise GenerationError(f"{type(child).__name__} is not a direct submodule of {type(parent).__name__}")


class DecoderStep(nn.Module):
    """One decoder step of a Hugging Face causal LM with the KV cache as plain tensors (see module docstring)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        prefix = getattr(lm, "base_model_prefix", None)
        decoder = getattr(lm, prefix, None) if prefix else None
        head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
        if decoder is None or head is None:
            raise GenerationError(f"{type(lm).__name__} is not a Hugging Face causal LM with a base model and an output head")
        self._decoder_name, self._head_name = prefix, _child_name(lm, head)
        self.add_module(self._decoder_name, decoder)  # same attribute names as in the LM: same layer names
        self.add_module(self._head_name, head)
        params = inspect.signature(decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.config = lm.config

    def forward(self, input_ids: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor):
        from transformers import DynamicCache

        b, t = input_ids.shape
        s = past_k.shape[3]
        cache = DynamicCache(ddp_cache_data=[(past_k[i], past_v[i]) for i in range(past_k.shape[0])])
        positions = torch.arange(s, s + t, device=input_ids.device).unsqueeze(0).expand(b, t)
        out = getattr(self, self._decoder_name)(input_ids=input_ids, position_ids=positions, use_cache=True,
                                                **{self._cache_kw: cache})
        logits = getattr(self, self._head_name)(out.last_hidden_state)
        layers = out.past_key_values.layers
        return logits, torch.stack([layer.keys for layer in layers]), torch.stack([layer.values for layer in layers])


def cache_geometry(lm: nn.Module) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) from a Hugging Face config."""
    c = lm.config.get_text_config(decoder=True) if hasattr(lm.config, "get_text_config") else lm.config
    n_layers = int(c.num_hidden_layers)
    n_heads = int(c.num_attention_heads)
    n_kv = int(getattr(c, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // n_heads)
    return n_layers, n_kv, head_dim


def _eos_ids(lm: nn.Module) -> list[int]:
    gc = getattr(lm, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    if eos is None:
        eos = getattr(lm.config, "eos_token_id", None)
    return [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])


def example_step_inputs(step: DecoderStep, geometry: tuple[int, int, int], batch: int = 2, seq: int = 16, past: int = 5,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [batch, seq], past_k, past_v [L, batch, H_kv, past, D]): the cache from a real float prefill of random
    tokens, so that data-free passes see realistic cache statistics. Distinct sizes keep the dims distinct."""
    gen = torch.Generator().manual_seed(seed)
    vocab = int(step.config.get_text_config(decoder=True).vocab_size if hasattr(step.config, "get_text_config")
                else step.config.vocab_size)
    n_layers, n_kv, head_dim = geometry
    dev = next(step.parameters()).device
    dtype = next(step.parameters()).dtype
    empty = torch.zeros(n_layers, batch, n_kv, 0, head_dim, dtype=dtype, device=dev)
    with torch.no_grad():
        _, k, v = step(torch.randint(0, vocab, (batch, past), generator=gen).to(dev), empty, empty)
    return torch.randint(0, vocab, (batch, seq), generator=gen).to(dev), k, v


def check_step(lm: nn.Module, step: DecoderStep, geometry, atol: float = 1e-3) -> None:
    """The wrapper must reproduce the LM's logits (full sequence and prefill + one cached step)."""
    vocab = int(lm.config.vocab_size)
    ids = torch.randint(0, vocab, (1, 6), generator=torch.Generator().manual_seed(1)).to(next(lm.parameters()).device)
    n_layers, n_kv, head_dim = geometry
    with torch.no_grad():
        want = lm(input_ids=ids, use_cache=False).logits
        empty = torch.zeros(n_layers, 1, n_kv, 0, head_dim, dtype=want.dtype, device=ids.device)
        full, k, v = step(ids, empty, empty)
        last, _, _ = step(ids[:, -1:], k[:, :, :, :-1], v[:, :, :, :-1])
    scale = float(want.abs().max()) + 1.0
    for what, got, ref in (("full sequence", full, want), ("cached step", last, want[:, -1:])):
        err = float((got - ref).abs().max())
        if err > atol * scale:
            raise GenerationError(f"{type(lm).__name__}: the decoder-step wrapper does not reproduce the model's logits "
                                  f"({what}: max error {err:.3g}); models with extra logit processing are not supported")


class _TokenLoop:
    """Greedy/sampled decoding around two hooks: `_start(ids [B, T]) -> logits [B, V]` of the last prompt token and
    `_advance(tok [B]) -> logits [B, V]` of one more token (each generator keeps its cache between them)."""

    compiled: object  # a CompiledModel of the step
    eos_token_ids: list[int]
    device: torch.device
    dtype: torch.dtype

    def to(self, device=None, dtype=None):
        """Move the compiled step (and the caches it will make) to `device` and/or compute in `dtype`."""
        self.compiled.to(device, dtype)
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        return self

    @staticmethod
    def _step_outputs(out):
        if not (isinstance(out, (tuple, list)) and len(out) == 3):
            raise GenerationError(f"the compiled step graph returned {type(out).__name__}, expected (logits, k, v)")
        return out

    def _start(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _advance(self, tok: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None, eos_token_id: int | list[int] | None = None,
                 stop_at_eos: bool = True) -> torch.Tensor:
        """prompt_ids [B, T] or [T] (unpadded) -> ids [B, T + n] with n <= max_new_tokens new tokens.

        Greedy by default; do_sample=True samples from softmax(logits / temperature), restricted to the top_k
        most likely tokens if given, with a torch.Generator seeded by `seed`. Stops when every sequence has
        produced an EOS (the model's generation_config EOS unless eos_token_id is given); sequences that
        finished earlier are padded with their EOS.
        """
        ids = prompt_ids.unsqueeze(0) if prompt_ids.dim() == 1 else prompt_ids
        if ids.dim() != 2 or ids.shape[1] < 1 or ids.is_floating_point():
            raise ValueError(f"prompt_ids must be integer token ids [B, T] with T >= 1, got {tuple(prompt_ids.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self._check_request(ids, max_new_tokens)
        eos = self.eos_token_ids if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        eos_t = torch.tensor(eos, dtype=torch.int64, device=self.device) if eos and stop_at_eos else None
        rng = torch.Generator(device=self.device)
        if seed is not None:
            rng.manual_seed(int(seed))
        ids = ids.to(self.device, torch.int64)
        out = [ids]
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=self.device)
        logits = self._start(ids) if max_new_tokens else None
        for i in range(max_new_tokens):
            nxt = self._choose(logits.float(), do_sample, temperature, top_k, rng)
            if eos_t is not None:
                nxt = torch.where(done, eos_t[0], nxt)
                done |= torch.isin(nxt, eos_t)
            out.append(nxt[:, None])
            if (eos_t is not None and bool(done.all())) or i == max_new_tokens - 1:
                break
            logits = self._advance(nxt)
        return torch.cat(out, dim=1)

    def _check_request(self, ids: torch.Tensor, max_new_tokens: int) -> None:
        """Raise for a request this generator cannot serve (the static one: batch, cache length)."""

    @staticmethod
    def _choose(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None, rng) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(-1)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=rng)[:, 0]

    def generate_text(self, tokenizer, prompt: str, max_new_tokens: int = 32, **kwargs) -> tuple[str, int]:
        """(prompt + generated text, number of new tokens) for a text prompt."""
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = self.generate(ids, max_new_tokens, **kwargs)
        new = out[0, ids.shape[1]:]
        return prompt + tokenizer.decode(new.tolist(), skip_special_tokens=True), int(new.numel())


class Generator(_TokenLoop):
    """Greedy/sampled generation with a KV cache through a compiled `DecoderStep` graph."""

    def __init__(self, compiled, geometry: tuple[int, int, int], eos_token_ids: list[int] | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        self.compiled = compiled
        self.n_layers, self.n_kv_heads, self.head_dim = geometry
        self.eos_token_ids = list(eos_token_ids or [])
        self.dtype = dtype
        self.device = torch.device(device)

    def empty_cache(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.n_layers, batch, self.n_kv_heads, 0, self.head_dim)
        return (torch.zeros(shape, dtype=self.dtype, device=self.device),
                torch.zeros(shape, dtype=self.dtype, device=self.device))

    def step(self, ids: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor):
        """(logits [B, T, V], k, v) of the compiled step graph."""
        return self._step_outputs(self.compiled(ids.to(self.device), past_k, past_v))

    def full_forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] of the whole sequence through the compiled step graph (empty cache)."""
        k, v = self.empty_cache(ids.shape[0])
        return self.step(ids, k, v)[0]

    __call__ = full_forward

    def _start(self, ids):
        logits, self._k, self._v = self.step(ids, *self.empty_cache(ids.shape[0]))
        return logits[:, -1]

    def _advance(self, tok):
        logits, self._k, self._v = self.step(tok[:, None], self._k, self._v)
        return logits[:, -1]


class StaticGenerator(_TokenLoop):
    """Generation through a compiled `StaticDecodeStep` graph: one token per step, a KV cache of `max_len`
    positions, fixed shapes. The prompt is fed one token at a time. A CUDA executor built with
    cuda_graphs=True (what compile_for_generation(max_len=...) makes on a GPU) captures the step once and
    replays it for every token."""

    def __init__(self, compiled, cache_shape: tuple[int, ...], eos_token_ids: list[int] | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        self.compiled = compiled
        self.cache_shape = tuple(int(d) for d in cache_shape)  # [L, B, H_kv, max_len, D]
        self.batch, self.max_len = self.cache_shape[1], self.cache_shape[3]
        self.eos_token_ids = list(eos_token_ids or [])
        self.dtype = dtype
        self.device = torch.device(device)

    def step(self, ids: torch.Tensor, pos: int, k_cache: torch.Tensor, v_cache: torch.Tensor):
        """(logits [B, 1, V], k_cache, v_cache) after the token ids [B, 1] at position pos."""
        return self._step_outputs(self.compiled(ids.to(self.device), torch.tensor([pos], device=self.device), k_cache,
                                                v_cache))

    def _check_request(self, ids, max_new_tokens):
        if ids.shape[0] != self.batch:
            raise ValueError(f"this StaticGenerator was compiled for batch {self.batch}, got {ids.shape[0]} prompts: "
                             f"compile_for_generation(..., max_len={self.max_len}, batch={ids.shape[0]})")
        need = ids.shape[1] + max_new_tokens - 1
        if need > self.max_len:
            raise ValueError(f"prompt ({ids.shape[1]}) + max_new_tokens ({max_new_tokens}) needs {need} cache positions, "
                             f"the static cache holds {self.max_len}: generate fewer tokens or compile with a larger "
                             "max_len")

    def _start(self, ids):
        self._k = torch.zeros(self.cache_shape, dtype=self.dtype, device=self.device)
        self._v = torch.zeros_like(self._k)
        for t in range(ids.shape[1]):
            logits, self._k, self._v = self.step(ids[:, t:t + 1], t, self._k, self._v)
        self._pos = ids.shape[1]
        return logits[:, -1]

    def _advance(self, tok):
        logits, self._k, self._v = self.step(tok[:, None], self._pos, self._k, self._v)
        self._pos += 1
        return logits[:, -1]


def static_example_inputs(step, batch: int, past: int = 5, seed: int = 0):
    """(ids [batch, 1], pos [1], k_cache, v_cache) for compiling a StaticDecodeStep: the cache holds a real float
    prefill of `past` random tokens (fed one at a time), so that data-free passes see realistic statistics."""
    gen = torch.Generator().manual_seed(seed)
    vocab = int(step.config.vocab_size)
    dev = next(step.parameters()).device
    kc, vc = step.new_cache(batch)
    ids = torch.randint(0, vocab, (batch, past + 1), generator=gen).to(dev)
    with torch.no_grad():
        for t in range(past):
            _, kc, vc = step(ids[:, t:t + 1], torch.tensor([t], device=dev), kc, vc)
    return ids[:, past:], torch.tensor([past], device=dev), kc, vc


def compile_for_generation(model: nn.Module, budget: float = 4.0, example_inputs=None, check: bool = True,
                           max_len: int | None = None, batch: int = 1, **compile_kwargs):
    """Compile `model`'s decoder step with `qcomp.compile(step, budget, **compile_kwargs)` for generation.

    max_len=None: the dynamic-cache DecoderStep (any HF causal LM, any batch and length) -> Generator.
    max_len=N: the static StaticDecodeStep (Llama-architecture models, a cache of N positions, `batch` prompts per
    call) -> StaticGenerator, which replays the step as a CUDA graph on a GPU.
    example_inputs: the step's inputs for the capture (default: example_step_inputs / static_example_inputs).
    check: verify first that the wrapper reproduces the model's own logits.
    """
    import qcomp

    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"compile_for_generation expects a Hugging Face causal LM, got {type(model).__name__}")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 2):
        raise ValueError(f"max_len must be an int >= 2 (cache positions), got {max_len!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    was_training = model.training
    model.eval()
    try:
        if max_len is None:
            step = DecoderStep(model).eval()
            geometry = cache_geometry(model)
            if check:
                check_step(model, step, geometry)
            if example_inputs is None:
                example_inputs = example_step_inputs(step, geometry)
            compile_kwargs.setdefault("capture", "export")
        else:
            from qcomp.static_decode import StaticDecodeStep

            try:
                step = StaticDecodeStep(model, max_len=max_len).eval()
            except ValueError as e:
                raise GenerationError(f"{e}; compile without max_len for the dynamic cache") from None
            if check:
                ids = torch.randint(0, int(model.config.vocab_size), (1, min(6, max_len)),
                                    generator=torch.Generator().manual_seed(1)).to(next(model.parameters()).device)
                step.check_against(model, ids)
            if example_inputs is None:
                example_inputs = static_example_inputs(step, batch, past=min(5, max_len - 1))
        compiled = qcomp.compile(step, budget=budget, example_inputs=tuple(example_inputs), **compile_kwargs)
    finally:
        model.train(was_training)
    p = next(model.parameters())
    if max_len is None:
        compiled.report["generation"] = {"kind": "dynamic", "geometry": list(geometry), "eos": _eos_ids(model)}
    else:
        compiled.report["generation"] = {"kind": "static", "cache_shape": list(step.cache_shape(batch)),
                                         "eos": _eos_ids(model)}
    return generator_for(compiled, device=p.device, dtype=p.dtype)


def generator_for(compiled, device=None, dtype=None):
    """The Generator (dynamic cache) or StaticGenerator for a compiled decoder step, from what
    compile_for_generation recorded in `compiled.report["generation"]` (saved with the artifact too, so
    `generator_for(qcomp.load(dir))` generates from an artifact). On CUDA a static step replays a CUDA graph."""
    info = (compiled.report or {}).get("generation")
    if not isinstance(info, dict) or info.get("kind") not in ("dynamic", "static"):
        raise GenerationError("this compiled model is not a decoder step: compile it with "
                              "qcomp.generate.compile_for_generation (CLI: qcomp compile HF_DIR --generation)")
    try:
        eos = [int(e) for e in info.get("eos", [])]
        dims = [int(d) for d in info["geometry" if info["kind"] == "dynamic" else "cache_shape"]]
    except (KeyError, TypeError, ValueError) as e:
        raise GenerationError(f"malformed generation record {info!r}: {e}") from None
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or torch.float32
    if info["kind"] == "dynamic":
        if len(dims) != 3:
            raise GenerationError(f"malformed generation record {info!r}: geometry needs (layers, kv heads, head dim)")
        return Generator(compiled, tuple(dims), eos, dtype=dtype, device=device)
    if len(dims) != 5:
        raise GenerationError(f"malformed generation record {info!r}: cache_shape needs [L, B, H_kv, max_len, D]")
    if device.type == "cuda":  # one CUDA graph of the step, replayed per token
        compiled = type(compiled)(compiled.graph, compiled.config, compiled.report, device=device, cuda_graphs=True)
    return StaticGenerator(compiled, tuple(dims), eos, dtype=dtype, device=device)
