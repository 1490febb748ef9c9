"""The lookup-table GEMV's PTX (codegen/lut_half2.py) run by a small PRMT/LOP3 model on the CPU: every pair of fp16
table values it returns equals the table entries of the word's codes (slots jj and jj + S/2), for random tables and
words. The GPU runs the same text (benchmarks/bench_kernels.py checks its results against the reference); the CPU
interpreter runs the plain-Triton twin, so this is where the PTX itself is tested in CI."""
from hypothesis import given, settings
from hypothesis import strategies as st

from qcomp.codegen import lut_half2
from qcomp.codegen.kernel_spec import KernelSpec

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


def run_ptx(text: str, regs: dict) -> dict:
    """Execute the straight-line PTX block (.reg, and, shr, lop3 0xEA, prmt) over the named 32-bit registers."""
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
        if op == "and.b32":
            v = val(a[1]) & val(a[2])
        elif op == "shr.b32":
            v = val(a[1]) >> val(a[2])  # (unsigned: every shifted value here is non-negative)
        elif op == "lop3.b32" and a[4] == "0xEA":
            v = (val(a[1]) & val(a[2])) | val(a[3])
        elif op == "prmt.b32":
            v = prmt(val(a[1]), val(a[2]), val(a[3]))
        else:
            raise AssertionError(f"the model does not know {ins!r}")
        r[a[0]] = v & M32
    return r


@settings(max_examples=300, deadline=None)
@given(bits=st.sampled_from([2, 4]), word=st.integers(0, M32), data=st.data())
def test_lut_pairs_ptx_looks_up_every_code(bits, word, data):
    spec = KernelSpec(bits=bits, grid="lut", variant="gemv", block_m=1)
    assert lut_half2.eligible(spec)
    table = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=2 ** bits, max_size=2 ** bits))  # fp16 bit patterns
    H, nt = 16 // bits, lut_half2.n_tables(spec)
    regs = {f"${H}": word}
    for k in range(nt):  # the byte planes table_setup builds: low bytes, then high bytes, 4 entries per register
        ents = table[4 * k: 4 * k + 4]
        regs[f"${H + 1 + k}"] = sum((e & 0xFF) << (8 * i) for i, e in enumerate(ents))
        regs[f"${H + 1 + nt + k}"] = sum((e >> 8) << (8 * i) for i, e in enumerate(ents))
    text = lut_half2._ptx_w4() if bits == 4 else lut_half2._ptx_w2()
    out = run_ptx(text, regs)
    mask = 2 ** bits - 1
    for jj in range(H):
        lo, hi = table[(word >> (jj * bits)) & mask], table[(word >> (jj * bits + 16)) & mask]
        assert out[f"${jj}"] == lo | hi << 16, f"pair {jj} of word {word:#010x}"


def test_lut_half2_scope():
    assert not lut_half2.eligible(KernelSpec(bits=3, grid="lut", variant="gemv", block_m=1))
    assert not lut_half2.eligible(KernelSpec(bits=2, grid="lut", p=2, group_size=256, variant="gemv", block_m=1, block_k=256))
    assert not lut_half2.eligible(KernelSpec(bits=4, grid="uniform", variant="gemv", block_m=1))
