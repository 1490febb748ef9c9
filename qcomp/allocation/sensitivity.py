"""Layer sensitivity α by noise injection (linearity theorem: Δ ≈ Σ_l α_l t_l²).

For one linear layer at a time, its weight W (as it is in the QIR graph, i.e. after any rotation that
was folded into it) is replaced by W + t·||W||·Z/||Z|| with Z ~ N(0, 1) fixed per layer, so that the
relative squared error is exactly t². The graph runs on the reference runtime and Δ(t) is measured
against the unperturbed graph. α is the least-squares slope of Δ against t² through the origin over
the noise levels (at least two):

    α = Σ_i t_i² Δ_i / Σ_i t_i⁴,     plus a linearity check: Δ_i / t_i² per level.

Modes (`SensitivityConfig.mode`):
* "data-free": inputs are random — token ids uniform over the vocabulary for integer inputs, Gaussian
  with the example's mean/std for float inputs — in the shape of the example inputs.
* "calibrated": the user's batches (a list of input tuples).

Metrics: "kl" = mean KL(p_original || p_noisy) over all positions of the output logits (nats);
"loss" = mean next-token cross-entropy increase (integer token inputs, logits output; measured with
antithetic ±Z pairs so that the first-order term cancels); "mse" = relative squared error of the
output; "cosine" = mean over output vectors (all positions) of 1 - cos(original, noisy) along the
last dim. "auto" = kl for integer inputs whose main output is logits (last dim >= the vocabulary of
the graph's embedding table), cosine for integer inputs whose main output is hidden states (an encoder:
a softmax over hidden features is meaningless, and embeddings are compared by cosine), mse for float
inputs.

Results are cached as JSON under `cache_dir` (default $QCOMP_CACHE_DIR or ~/.cache/qcomp), keyed by a
hash of the graph text, its parameter contents, the layer list, the config and, when calibrated, the
calibration inputs. The cost (forward passes, tokens/elements, seconds) is reported with the result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from qcomp.qir import Graph, print_graph
from qcomp.runtime.reference import ReferenceRuntime

SENSITIVITY_VERSION = 1
MODES = ("data-free", "calibrated")
METRICS = ("auto", "kl", "loss", "mse", "cosine")


@dataclass(frozen=True)
class SensitivityConfig:
    mode: str = "data-free"
    levels: tuple[float, ...] = (0.1, 0.2)  # relative noise t; t² spans typical 2..4-bit errors
    n_batches: int = 4  # data-free: random batches of the example inputs' shape
    metric: str = "auto"
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "levels", tuple(float(t) for t in self.levels))
        if self.mode not in MODES:
            raise ValueError(f"sensitivity mode must be one of {MODES}, got {self.mode!r}")
        if self.metric not in METRICS:
            raise ValueError(f"sensitivity metric must be one of {METRICS}, got {self.metric!r}")
        if len(set(self.levels)) < 2 or not all(0 < t < 10 for t in self.levels):
            raise ValueError(f"need at least two distinct noise levels in (0, 10), got {self.levels}")
        if self.n_batches < 1:
            raise ValueError(f"n_batches must be >= 1, got {self.n_batches}")

    def to_dict(self) -> dict:
        return {"version": SENSITIVITY_VERSION, **dataclasses.asdict(self)}


@dataclass
class Sensitivity:
    """α per layer (QIR node name), the measured Δ per noise level, and what it cost."""

    alphas: dict[str, float]
    deltas: dict[str, list[float]]
    levels: tuple[float, ...]
    metric: str
    config: dict
    cost: dict = field(default_factory=dict)
    key: str = ""

    def linearity(self, name: str) -> list[float]:
        """Δ_i / t_i² per level (equal values = exactly linear in t²)."""
        return [d / t**2 for d, t in zip(self.deltas[name], self.levels)]

    def to_dict(self) -> dict:
        return {"version": SENSITIVITY_VERSION, "key": self.key, "metric": self.metric, "levels": list(self.levels),
                "config": self.config, "alphas": self.alphas, "deltas": self.deltas, "cost": self.cost}

    @classmethod
    def from_dict(cls, d: dict) -> "Sensitivity":
        if d.get("version") != SENSITIVITY_VERSION:
            raise ValueError(f"sensitivity cache version {d.get('version')!r} is not {SENSITIVITY_VERSION}")
        return cls(alphas=d["alphas"], deltas=d["deltas"], levels=tuple(d["levels"]), metric=d["metric"],
                   config=d["config"], cost=d["cost"], key=d["key"])


def fit_slope(levels, deltas) -> float:
    """Least-squares α in Δ = α t² (through the origin)."""
    t2 = [t * t for t in levels]
    return sum(a * d for a, d in zip(t2, deltas)) / sum(a * a for a in t2)


# -- inputs ---------------------------------------------------------------------------------------
def vocab_size(graph: Graph) -> int | None:
    """Rows of the first embedding table of the graph (the token vocabulary), if any."""
    for n in graph.nodes:
        if n.op == "embedding":
            return int(graph.param(n.args[0]).shape[0])
    return None


def token_inputs(graph: Graph) -> set[int] | None:
    """Indices of the graph inputs whose values reach an embedding's ids (token ids), or None for a graph without
    an embedding. Other integer inputs (a decoder step's cache position, say) are not tokens."""
    embeds = [n for n in graph.nodes if n.op == "embedding"]
    if not embeds:
        return None
    found, seen = set(), set()
    todo = [r.name for n in embeds for r in n.refs()[1:]]  # args[0] is the table
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        node = graph.node(name)
        if node.op == "input":
            found.add(int(node.attrs["index"]))
        elif node.op != "param":
            todo.extend(r.name for r in node.refs())
    return found


def random_inputs(graph: Graph, example_inputs: tuple, n_batches: int, seed: int = 0) -> list[tuple]:
    """Random batches shaped like `example_inputs`: token ids for the integer inputs that feed an embedding,
    Gaussians for floats; other integer inputs (positions) and masks keep their example values."""
    if not example_inputs:
        raise ValueError("data-free sensitivity needs example inputs (their shapes and dtypes) to draw random inputs")
    gen = torch.Generator().manual_seed(seed)
    vocab = vocab_size(graph)
    tokens = token_inputs(graph)
    batches = []
    for _ in range(n_batches):
        batch = []
        for i, x in enumerate(example_inputs):
            if not isinstance(x, torch.Tensor):
                batch.append(x)
            elif x.is_floating_point():
                xf = x.detach().float().cpu()
                std, mean = (xf.std(), xf.mean()) if x.numel() > 1 else (torch.tensor(1.0), torch.tensor(0.0))
                batch.append((torch.randn(x.shape, generator=gen) * std + mean).to(device=x.device, dtype=x.dtype))
            elif x.dtype == torch.bool or (tokens is not None and i not in tokens):
                batch.append(x.clone())  # masks, positions: keep as given
            else:
                hi = vocab if vocab is not None else int(x.max()) + 1
                batch.append(torch.randint(0, max(hi, 1), x.shape, generator=gen, dtype=x.dtype).to(x.device))
        batches.append(tuple(batch))
    return batches


# -- metrics --------------------------------------------------------------------------------------
def _main_output(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        if "logits" in out:
            return out["logits"]
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for v in out:
            if isinstance(v, torch.Tensor):
                return v
    raise TypeError(f"cannot find a tensor in the model output of type {type(out).__name__}")


class _Metric:
    """Reference quantities of one batch, and Δ of a perturbed output against them."""

    def __init__(self, kind: str, ref: torch.Tensor, inputs: tuple):
        self.kind = kind
        ref = ref.float()
        if kind == "kl":
            self.ref_logp = F.log_softmax(ref, dim=-1)
        elif kind == "loss":
            ids = inputs[0]
            if ids.is_floating_point() or ref.dim() != 3 or ref.shape[:2] != ids.shape:
                raise ValueError("metric 'loss' needs integer token inputs [B, T] and logits [B, T, V]")
            self.labels = ids[:, 1:].reshape(-1).to(ref.device)
            self.ref_loss = self._ce(ref)
        elif kind == "cosine":
            self.ref_unit = F.normalize(ref.double().reshape(-1, ref.shape[-1]), dim=-1)
        else:
            self.ref = ref
            self.ref_sq = float((ref.double() ** 2).sum().clamp_min(1e-300))

    def _ce(self, logits) -> float:
        return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), self.labels))

    def delta(self, out: torch.Tensor) -> float:
        out = out.float()
        if self.kind == "kl":
            logq = F.log_softmax(out, dim=-1)
            kl = (self.ref_logp.exp() * (self.ref_logp - logq)).sum(-1)
            return float(kl.mean())
        if self.kind == "loss":
            return self._ce(out) - self.ref_loss
        if self.kind == "cosine":
            unit = F.normalize(out.double().reshape(-1, out.shape[-1]), dim=-1)
            return float((1.0 - (unit * self.ref_unit).sum(-1)).mean())
        return float(((out.double() - self.ref.double()) ** 2).sum()) / self.ref_sq


def auto_metric(graph: Graph, inputs: tuple, output: torch.Tensor) -> str:
    """The "auto" metric for a graph, one input batch and its main output (see the module docstring)."""
    first = inputs[0] if inputs else None
    if not (isinstance(first, torch.Tensor) and not first.is_floating_point()):
        return "mse"
    vocab = vocab_size(graph)
    if vocab is not None and output.dim() >= 2 and output.shape[-1] < vocab:
        return "cosine"  # hidden states of an encoder, not logits over the vocabulary
    return "kl"


# -- the measurement ------------------------------------------------------------------------------
def graph_hash(graph: Graph) -> str:
    """Content hash of a graph: its text form and every parameter's name, dtype, shape and bytes."""
    h = hashlib.sha256(print_graph(graph).encode())
    for name in sorted(graph.params):
        t = graph.params[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _inputs_hash(batches: list[tuple]) -> str:
    h = hashlib.sha256()
    for b in batches:
        for x in b:
            if isinstance(x, torch.Tensor):
                t = x.detach().contiguous().cpu()
                h.update(f"{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes())
            else:
                h.update(repr(x).encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("QCOMP_CACHE_DIR") or Path.home() / ".cache" / "qcomp")


def measure_sensitivity(
    graph: Graph,
    layers: list[str],
    config: SensitivityConfig = SensitivityConfig(),
    *,
    example_inputs: tuple = (),
    calibration: list[tuple] | None = None,
    cache_dir: str | os.PathLike | None | bool = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Sensitivity:
    """α for each linear node in `layers` (QIR node names). cache_dir=False disables the disk cache."""
    targets = {}
    for name in layers:
        node = graph.node(name)
        if node.op != "linear":
            raise ValueError(f"%{name} is a {node.op}, not a linear layer: only float linear weights can be perturbed")
        targets[name] = graph.node(node.args[1]).attrs["target"]

    if config.mode == "calibrated":
        if not calibration:
            raise ValueError("calibrated sensitivity needs calibration batches (a list of input tuples)")
        batches = [b if isinstance(b, tuple) else (b,) for b in calibration]
    else:
        batches = random_inputs(graph, tuple(example_inputs), config.n_batches, config.seed)
    rt = _NoisyRuntime(graph, device=device)
    refs = []  # reference outputs; "auto" looks at the first one before the cache lookup, the rest wait for a miss
    if config.metric == "auto":
        refs.append(_main_output(rt.run(*batches[0])))
    metric = config.metric if config.metric != "auto" else auto_metric(graph, batches[0], refs[0])

    key_src = json.dumps({"graph": graph_hash(graph), "layers": layers, "config": config.to_dict(), "metric": metric,
                          "inputs": _inputs_hash(batches) if config.mode == "calibrated" else None}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    cache_file = None
    if cache_dir is not False:
        cache_file = Path(cache_dir or default_cache_dir()) / f"sensitivity-{key}.json"
        if cache_file.exists():
            s = Sensitivity.from_dict(json.loads(cache_file.read_text()))
            s.cost = {**s.cost, "cached": str(cache_file)}
            return s

    t0 = time.perf_counter()
    refs += [_main_output(rt.run(*b)) for b in batches[len(refs):]]
    metrics = [_Metric(metric, r, b) for r, b in zip(refs, batches)]
    signs = (1.0, -1.0) if metric == "loss" else (1.0,)
    elems = sum(b[0].numel() for b in batches if isinstance(b[0], torch.Tensor))
    n_fwd = len(batches)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(layers) * len(config.levels), desc="sensitivity", unit="probe")
    alphas, deltas = {}, {}
    for name in layers:
        target = targets[name]
        w = graph.params[target]
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + zlib.crc32(name.encode()))
        z = torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.device)  # seeded on CPU: same noise on any device
        z *= w.float().norm() / z.norm().clamp_min(1e-30)
        ds = []
        for t in config.levels:
            total = 0.0
            for s in signs:
                rt.set_noise(target, (w.float() + s * t * z).to(w.dtype))
                total += sum(m.delta(_main_output(rt.run(*b))) for m, b in zip(metrics, batches))
                n_fwd += len(batches)
            ds.append(total / (len(signs) * len(batches)))
            if bar is not None:
                bar.update(1)
        rt.set_noise(None, None)
        deltas[name] = ds
        alphas[name] = fit_slope(config.levels, ds)
    if bar is not None:
        bar.close()

    seconds = time.perf_counter() - t0
    cost = {"forwards": n_fwd, "input_elements_per_forward": elems // max(len(batches), 1),
            "seconds": round(seconds, 3), "cached": False}
    s = Sensitivity(alphas=alphas, deltas=deltas, levels=config.levels, metric=metric, config=config.to_dict(),
                    cost=cost, key=key)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(s.to_dict(), indent=1))
        tmp.replace(cache_file)
    return s


class _NoisyRuntime(ReferenceRuntime):
    """The reference runtime with one parameter replaced (the perturbed weight)."""

    _noise_target: str | None = None
    _noise: torch.Tensor | None = None

    def set_noise(self, target: str | None, tensor: torch.Tensor | None) -> None:
        self._noise_target = target
        self._noise = None if tensor is None else (tensor.to(self.device) if self.device is not None else tensor)

    def param(self, target: str) -> torch.Tensor:
        if target == self._noise_target:
            return self._noise
        return super().param(target)

