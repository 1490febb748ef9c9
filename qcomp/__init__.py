"""qcomp: a compiler for quantized compute graphs.

    compiled = qcomp.compile(model, budget=3.5, example_inputs=(x,))
    y = compiled(x)
"""
__version__ = "0.1.0"

from .api import CompiledModel, QcompWarning, compile  # noqa: E402
from .capture import CaptureError  # noqa: E402
from .config import CompileConfig  # noqa: E402
from .artifact import ArtifactError, load  # noqa: E402

__all__ = ["ArtifactError", "CaptureError", "CompileConfig", "CompiledModel", "QcompWarning", "compile", "load", "__version__"]
