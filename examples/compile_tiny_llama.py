"""Compile the built-in Llama-style model at 3.5 bits, check it against PyTorch, save, load, time it.

    python examples/compile_tiny_llama.py [--budget 3.5] [--dump-dir dumps/tiny]
"""
import argparse
import tempfile
import time

import torch

import qcomp
from qcomp.models.tiny import builtin_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=3.5)
    ap.add_argument("--dump-dir", default=None)
    args = ap.parse_args()

    model, (ids,) = builtin_model("tiny-llama")
    t = time.perf_counter()
    compiled = qcomp.compile(model, budget=args.budget, example_inputs=(ids,), dump_dir=args.dump_dir)
    print(f"compiled in {time.perf_counter() - t:.1f}s\n{compiled.summary()}\n")

    x = torch.randint(0, 256, (3, 24))  # another batch and length than the capture's
    with torch.no_grad():
        ref = model(x)
    out = compiled(x)
    rel = ((out - ref).norm() / ref.norm()).item()
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"vs PyTorch: relative logit error {rel:.3f}, top-1 agreement {agree:.1%}")

    with tempfile.TemporaryDirectory() as d:
        compiled.save(f"{d}/tiny.qc")
        loaded = qcomp.load(f"{d}/tiny.qc")
        assert torch.equal(loaded(x), out), "a loaded artifact must reproduce the compiled model bitwise"
        print(f"saved and re-loaded {d}/tiny.qc: outputs identical")

    for name, fn in (("pytorch", lambda: model(x)), ("qcomp reference runtime", lambda: compiled(x))):
        with torch.no_grad():
            fn()
            t = time.perf_counter()
            for _ in range(5):
                fn()
        print(f"{name:>24}: {(time.perf_counter() - t) / 5 * 1e3:.2f} ms per call (CPU)")


if __name__ == "__main__":
    main()
