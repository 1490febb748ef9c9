"""torch.compile of a compiled model's graph module with the inductor settings that made the decode step fastest.

    step = compiled.torch_compile("cuda")     # = torch.compile(compiled.graph_module("cuda"), options=...)
    out = step(*inputs)                       # capture it in a CUDA graph for decoding (benchmarks/gpu_decode.py)

Inductor fuses the glue between the qlinear kernels (norms, rotary, residual adds, casts). Two of its settings change
how that glue launches, not what each kernel computes (INDUCTOR_SETTINGS):
- `pdl`: programmatic dependent launch: each glue kernel starts while the kernel before it finishes and waits
  (griddepcontrol.wait) before reading its output; with qcomp's own kernels at QCOMP_PDL=2 (codegen.ops) the
  chain of launches overlaps end to end. Logits equal the plain compile's in every measured call.
- `combo`: independent pointwise kernels merged into one launch. It can change a graph's rounding (budget 3.0 on
  the H200: logits max rel 1.3e-2 from the plain compile, deterministic); `combo=False` keeps the plain numbers.
Measured on the H200 (Llama-3-8B architecture, batch 1, budget 3.5; benchmarks/RESULTS.md, session 20): plain
compile 3.152 ms per step, pdl 2.947, pdl+combo 2.879 (bf16 eager + CUDA graph 7.362). At batch 16 (the qlinear
calls take the tensor-core variant, launched without PDL) pdl made the step slower (7.628 vs 7.548 ms) and changed
the logits by 4.1e-3: compile batched steps with pdl=False.
"""
from __future__ import annotations

import torch

from qcomp.qir import Graph

from .fx_lowering import to_graph_module

INDUCTOR_SETTINGS = {"pdl": {"triton.enable_pdl": True}, "combo": {"combo_kernels": True}}


def inductor_options(pdl: bool = True, combo: bool = True) -> dict:
    """The inductor options of INDUCTOR_SETTINGS that `pdl` / `combo` ask for; ValueError naming the setting where
    this torch's inductor lacks one."""
    import torch._inductor.config as inductor_config

    options = {**(INDUCTOR_SETTINGS["pdl"] if pdl else {}), **(INDUCTOR_SETTINGS["combo"] if combo else {})}
    known = inductor_config.get_config_copy()
    missing = sorted(k for k in options if k not in known)
    if missing:
        raise ValueError(f"this torch's inductor ({torch.__version__}) has no setting {missing}: pass "
                         + " and ".join(f"{name}=False" for name, s in INDUCTOR_SETTINGS.items() if set(s) & set(missing))
                         + " to compile without it")
    return options


def torch_compile_graph(graph: Graph, device=None, *, dtype: torch.dtype | None = None, pdl: bool = True,
                        combo: bool = True, **compile_kwargs):
    """torch.compile(to_graph_module(graph, device, dtype), options=inductor_options(pdl, combo), **compile_kwargs).

    `compile_kwargs` go to torch.compile (fullgraph=True, mode=..., dynamic=...). Another backend than inductor
    takes no inductor options: pass pdl=False and combo=False with it."""
    backend = compile_kwargs.get("backend", "inductor")
    options = {**inductor_options(pdl, combo), **(compile_kwargs.pop("options", None) or {})}
    if backend != "inductor" and options:
        raise ValueError(f"torch_compile(backend={backend!r}) with inductor options {sorted(options)}: pass "
                         "pdl=False, combo=False (and no options=) with a backend other than inductor")
    if compile_kwargs.get("mode") is not None and options:
        raise ValueError(f"torch_compile(mode={compile_kwargs['mode']!r}) with inductor options {sorted(options)}: "
                         "torch.compile takes a mode or options, not both; pass pdl=False, combo=False with a mode")
    gm = to_graph_module(graph, device=device, dtype=dtype)
    return torch.compile(gm, options=options or None, **compile_kwargs)
