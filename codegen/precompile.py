"""Compile every autotuning candidate of a model's kernel calls ahead of time, in parallel processes.

The autotuner (tune.py) times up to ~18 (spec, split-K) candidates per (base spec, M bucket, N, K). Timing
is quick; compiling them one after another in the calling process is not (about a second each, hundreds per
model), and it used to make a first batch-16 decode step take many minutes. This module:

    with recording() as calls:          # the qlinear op records each kernel call it would make and returns
        runtime.run(*inputs)            # the reference result instead (nothing is compiled or launched)
    precompile(calls, device)           # all candidates of those calls, compiled by a process pool into
                                        # Triton's on-disk cache; the autotuner then only times them

`Executor.precompile(*inputs)` does both. Workers compile with dummy tensors of the real shapes and dtypes (the
same specialization as the later real call), so their binaries are the ones the process then loads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time

import torch

from .kernel_spec import KernelSpec

_RECORDER: list | None = None


@dataclasses.dataclass(frozen=True)
class KernelCall:
    """One qlinear kernel call as the autotuner sees it (dtypes by name, e.g. "float16")."""

    base: KernelSpec
    m: int
    n: int
    k: int
    x_dtype: str
    scales_dtype: str
    has_offsets: bool
    bias_dtype: str | None
    has_residual: bool = False  # the epilogue adds a residual (HAS_RES): a kernel compiled of its own

    @classmethod
    def of(cls, base: KernelSpec, x2: torch.Tensor, n: int, k: int, scales, offsets, bias,
           has_residual: bool = False) -> "KernelCall":
        def name(t):
            return None if t is None else str(t.dtype).removeprefix("torch.")

        return cls(base, x2.shape[0], n, k, name(x2), name(scales), offsets is not None, name(bias), has_residual)


@contextlib.contextmanager
def recording():
    """Collect the KernelCalls the qlinear op would make; inside, the op returns the reference result."""
    global _RECORDER
    prev, _RECORDER = _RECORDER, []
    try:
        yield _RECORDER
    finally:
        _RECORDER = prev


def recorder() -> list | None:
    """The active recording list (None outside `recording()`)."""
    return _RECORDER


def jobs_for(calls, device) -> list[tuple]:
    """Unique compile jobs (spec JSON, split, call fields) for every tuning candidate of `calls`."""
    from . import tune

    jobs, seen = [], set()
    for c in dict.fromkeys(calls):
        for spec, split in tune.candidates(c.base, c.m, c.n, c.k, device):
            key = (spec, split > 1, c.m, c.n, c.k, c.x_dtype, c.scales_dtype, c.has_offsets, c.bias_dtype,
                   c.has_residual)
            if key not in seen:
                seen.add(key)
                jobs.append(job(spec, split, c.m, c.n, c.k, c.x_dtype, c.scales_dtype, c.has_offsets, c.bias_dtype,
                                c.has_residual))
    return jobs


def job(spec: KernelSpec, split: int, m: int, n: int, k: int, x_dtype: str, scales_dtype: str = "float16",
        has_offsets: bool = False, bias_dtype: str | None = None, has_residual: bool = False) -> tuple:
    """One compile job (compile_jobs' tuple): the spec's kernel as a launch of these shapes and dtypes compiles it."""
    return (spec.to_json(), split, m, n, k, x_dtype, scales_dtype, has_offsets, bias_dtype, has_residual)


def compile_jobs(jobs) -> int:
    """Worker: compile (launch(warmup=True)) each job with dummy CUDA tensors of its shapes and dtypes."""
    from .ops import launch
    from .packing import packed_shape

    done = 0
    for sj, split, m, n, k, xd, sd, has_off, bd, has_res in jobs:
        spec = KernelSpec.from_json(sj)
        try:
            dev = "cuda"
            g = k if spec.group_size == -1 else spec.group_size
            x2 = torch.empty(m, 2 * k if spec.x_glu else k, dtype=getattr(torch, xd), device=dev)
            packed = torch.empty(packed_shape(n, k // spec.p, spec.code_bits), dtype=torch.int32, device=dev)
            scales = torch.empty(n, k // g, dtype=getattr(torch, sd), device=dev)
            offsets = torch.empty_like(scales) if has_off else None
            lut = torch.empty(2 ** spec.code_bits, spec.p, device=dev)
            bias = torch.empty(n, dtype=getattr(torch, bd), device=dev) if bd else None
            signs = torch.ones(spec.had_block or 1, device=dev)
            norm = (torch.ones(k, dtype=x2.dtype, device=dev), 1e-6) if spec.x_norm else None
            res = torch.empty(m, n, dtype=x2.dtype, device=dev) if has_res else None
            launch(spec, split, x2, packed, scales, lut, offsets, bias, signs, n, k, warmup=True, norm=norm,
                   residual=res)
            done += 1
        except Exception as e:  # a candidate that cannot compile is skipped again (and said) at tuning time
            print(f"qcomp precompile {spec.name()}: {type(e).__name__}: {str(e)[:160]}", flush=True)
    return done


def precompile(calls, device, workers: int | None = None) -> dict:
    """Compile all tuning candidates of `calls` with a pool of `workers` processes (default: cores - 2)."""
    return compile_in_pool(jobs_for(calls, torch.device(device)), workers)


def compile_in_pool(jobs, workers: int | None = None) -> dict:
    """Compile `jobs` (jobs_for's tuples) with a pool of `workers` processes (default: cores - 2)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, min(workers or (os.cpu_count() or 2) - 2, len(jobs) or 1))
    t = time.perf_counter()
    if not jobs:
        return {"jobs": 0, "compiled": 0, "workers": 0, "seconds": 0.0}
    chunks = [jobs[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        done = sum(ex.map(compile_jobs, chunks))
    return {"jobs": len(jobs), "compiled": done, "workers": workers, "seconds": time.perf_counter() - t}
