"""A small model of the straight-line PTX blocks the generated kernels inline (lut_regs.py, gemm_regs.py), so that
CI on the CPU runs the PTX text itself; the CPU interpreter runs the plain-Triton twins instead."""
import numpy as np

M32 = 0xFFFFFFFF


def prmt(a: int, b: int, c: int) -> int:
    """PTX prmt.b32 (default mode): byte i of the result is byte c[4i+2:4i] of {b, a}; c[4i+3] replicates its sign."""
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    out = 0
    for i in range(4):
        nib = (c >> (4 * i)) & 0xF
        byte = src[nib & 7]
        out |= ((0xFF if byte & 0x80 else 0) if nib & 8 else byte) << (8 * i)
    return out


def f16x2(v: int) -> np.ndarray:
    """The two fp16 halves of a 32-bit register, low half first."""
    return np.array([v & 0xFFFF, v >> 16], dtype=np.uint16).view(np.float16)


def _bits(h: np.ndarray) -> int:
    lo, hi = (int(b) for b in h.astype(np.float16).view(np.uint16))
    return lo | hi << 16


def run_ptx(text: str, regs: dict) -> dict:
    """Execute the straight-line PTX block (.reg, mov, and, or, shl, shr, lop3 0xEA, prmt, sub.rn.f16x2,
    fma.rn.f16x2) over the named 32-bit registers. The f16x2 ops round once, to nearest even: the exact result in
    float64 (a product of two halves and a sum with a third are exact there) rounded to float16."""
    r = dict(regs)

    def val(x):
        return r[x] if x.startswith("$") or x in r else int(x, 0)

    body = text.strip()
    assert body[0] == "{" and body[-1] == "}"
    for ins in body[1:-1].split(";"):
        ins = ins.strip()
        if not ins or ins.startswith(".reg"):
            continue
        op, rest = ins.split(None, 1)
        a = [t.strip() for t in rest.split(",")]
        if op == "mov.b32":
            v = val(a[1])
        elif op == "sub.rn.f16x2":
            v = _bits(f16x2(val(a[1])).astype(np.float64) - f16x2(val(a[2])).astype(np.float64))
        elif op == "fma.rn.f16x2":
            x, y, z = (f16x2(val(t)).astype(np.float64) for t in a[1:4])
            v = _bits(x * y + z)
        elif op == "and.b32":
            v = val(a[1]) & val(a[2])
        elif op == "shr.b32":
            v = val(a[1]) >> val(a[2])  # (unsigned: every shifted value here is non-negative)
        elif op == "shl.b32":
            v = val(a[1]) << val(a[2])
        elif op == "or.b32":
            v = val(a[1]) | val(a[2])
        elif op == "lop3.b32" and a[4] == "0xEA":
            v = (val(a[1]) & val(a[2])) | val(a[3])
        elif op == "prmt.b32":
            v = prmt(val(a[1]), val(a[2]), val(a[3]))
        else:
            raise AssertionError(f"the model does not know {ins!r}")
        r[a[0]] = v & M32
    return r
