"""QIR value types: tensors with a dtype and a shape whose dims are ints or sympy expressions.

Text form: `f32[2, s0, 576]`, `i64[s0, s1]`, `sym` (a symbolic integer), `none`, `any` (a non-tensor
Python value, e.g. a tuple returned by an opaque call).
"""
from __future__ import annotations

from dataclasses import dataclass

import functools
import re

import sympy
from sympy.printing.str import StrPrinter
import torch

DTYPE_NAMES = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
    torch.bool: "bool", torch.complex64: "c64", torch.complex128: "c128",
    torch.float8_e4m3fn: "f8e4m3", torch.float8_e5m2: "f8e5m2",
}
NAME_DTYPES = {v: k for k, v in DTYPE_NAMES.items()}

Dim = int | sympy.Expr


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no QIR name; supported: {sorted(NAME_DTYPES)}") from None


@functools.cache
def _torch_sympy_functions() -> dict:
    from torch.utils._sympy import functions as symfn

    return {name: obj for name, obj in vars(symfn).items()
            if isinstance(obj, type) and issubclass(obj, sympy.Function) and obj.__module__ == symfn.__name__
            and not hasattr(sympy, name)}


class _DimPrinter(StrPrinter):
    """sympy's str printer, but torch's size functions (FloorDiv, ModularIndexing, ...) print as calls."""

    def _print(self, expr, **kwargs):
        if isinstance(expr, sympy.Function) and type(expr).__name__ in _torch_sympy_functions():
            return f"{type(expr).__name__}({', '.join(self._print(a) for a in expr.args)})"
        return super()._print(expr, **kwargs)


def parse_dim(text: str) -> Dim:
    """Parse a dim: an int or a sympy expression; symbols are integer and positive, as torch.export makes them."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    local = {k: v for k, v in _torch_sympy_functions().items() if k in names}
    for n in names:
        if n not in local and not hasattr(sympy, n):
            local[n] = sympy.Symbol(n, integer=True, positive=True)
    expr = sympy.sympify(text, locals=local)
    if expr.is_Integer:
        return int(expr)
    return expr


def dim_text(d: Dim) -> str:
    return str(d) if not isinstance(d, sympy.Expr) else _DimPrinter().doprint(d).replace(" ", "")


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return NAME_DTYPES[self.dtype]

    @property
    def rank(self) -> int:
        return len(self.shape)

    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(dim_text(d) for d in self.shape)}]"

    @staticmethod
    def of(t: torch.Tensor) -> "TensorType":
        return TensorType(dtype_name(t.dtype), tuple(_dim_of(d) for d in t.shape))

    def matches(self, t: torch.Tensor) -> bool:
        """True when a concrete tensor fits this type (symbolic dims match any size)."""
        if dtype_name(t.dtype) != self.dtype or t.dim() != self.rank:
            return False
        return all(not isinstance(d, int) or d == s for d, s in zip(self.shape, t.shape))


@dataclass(frozen=True)
class OtherType:
    """Non-tensor values: 'sym' (symbolic int), 'none', 'any'."""

    kind: str

    def __str__(self) -> str:
        return self.kind


SYM = OtherType("sym")
NONE = OtherType("none")
ANY = OtherType("any")
OTHER_TYPES = {"sym": SYM, "none": NONE, "any": ANY}

QType = TensorType | OtherType


def _dim_of(d) -> Dim:
    if isinstance(d, int):
        return d
    if isinstance(d, torch.SymInt):
        expr = d.node.expr
        return int(expr) if expr.is_Integer else expr
    return int(d)


def type_of_example(v) -> QType:
    """QIR type of an example value (a torch tensor, FakeTensor, SymInt, None or anything else)."""
    if isinstance(v, torch.Tensor):
        return TensorType.of(v)
    if isinstance(v, (torch.SymInt, int)) and not isinstance(v, bool):
        return SYM
    if v is None:
        return NONE
    return ANY
