"""CompileConfig: every choice `qcomp.compile` makes, frozen, serialized to versioned JSON."""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from .versioned_json import dumps_versioned, loads_versioned

CONFIG_VERSION = 1
# fuse-hadamard(residual=False): QuaRot-style residual rotation folds RMSNorm weights into the linears, which
# costs data-free quantization accuracy (SmolLM2, 20x1024 wikitext-2, p=1 grid: 42.0 vs 36.0 ppl at 4 bits,
# 27.4 vs 25.4 at 5 bits; benchmarks/RESULTS_rotation.md). The online rotations are fused into the kernels.
DEFAULT_PIPELINE = "canonicalize,fuse-cache-attention,insert-hadamard,fuse-hadamard(residual=False),allocate-bits,quantize,lower"


def check_budget(budget) -> float:
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise ValueError(f"budget must be a number of bits per weight in [1, 16], got {budget!r} ({type(budget).__name__})")
    b = float(budget)
    if not (1.0 <= b <= 16.0):
        raise ValueError(f"budget must be in the range [1, 16] bits per weight, got {b}")
    return b


@dataclass(frozen=True)
class CompileConfig:
    budget: float = 4.0
    pipeline: str = DEFAULT_PIPELINE
    capture: str = "auto"  # auto | fx | export
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "budget", check_budget(self.budget))
        if self.capture not in ("auto", "fx", "export"):
            raise ValueError(f"capture must be 'auto', 'fx' or 'export', got {self.capture!r}")

    def to_json(self) -> str:
        return dumps_versioned(CONFIG_VERSION, dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "CompileConfig":
        return cls(**loads_versioned(text, CONFIG_VERSION, "CompileConfig"))
