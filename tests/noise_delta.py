"""Shared by the linearity-theorem tests: the measured metric change when every layer gets relative noise t."""
import torch

from qcomp.allocation.sensitivity import _main_output, _Metric, random_inputs
from qcomp.runtime.reference import ReferenceRuntime


def all_layers_noise_delta(g, layers, x, t: float, metric: str, seed: int = 9, n_batches: int = 4) -> float:
    """Mean `metric` delta over `n_batches` random inputs between g and g with noise of relative size t in every layer."""
    gen, noisy = torch.Generator().manual_seed(seed), g.copy()
    for name in layers:
        target = g.node(g.node(name).args[1]).attrs["target"]
        w = g.params[target]
        z = torch.randn(w.shape, generator=gen)
        noisy.params[target] = w + t * w.norm() * z / z.norm()
    batches = random_inputs(g, x, n_batches, seed=0)
    return sum(_Metric(metric, _main_output(ReferenceRuntime(g).run(*b)), b).delta(
        _main_output(ReferenceRuntime(noisy).run(*b))) for b in batches) / len(batches)
