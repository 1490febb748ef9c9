"""qcomp.codegen: packed weight layout, kernel specs, generated Triton qlinear kernels and the qcomp::qlinear op."""
from .kernel_spec import MAX_FUSED_HADAMARD, KernelSpec, KernelSpecError
from .packing import PACKING_VERSION, pack_codes, packed_shape, unpack_codes
from .render import kernel_source, load_kernel

__all__ = [
    "KernelSpec", "KernelSpecError", "MAX_FUSED_HADAMARD", "PACKING_VERSION", "pack_codes", "packed_shape",
    "unpack_codes", "kernel_source", "load_kernel", "qlinear",
]


def __getattr__(name):  # the op module imports torch.library machinery; load it on first use
    if name in ("qlinear", "ops"):
        from . import ops
        return ops.qlinear if name == "qlinear" else ops
    raise AttributeError(name)
