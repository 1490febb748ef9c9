"""The lookup-table GEMV's PTX (codegen/lut_regs.py) run by a small PRMT/LOP3 model on the CPU: every pair of fp16
table values it returns equals the table entries of the word's codes (slots jj and jj + S/2), for random tables and
words. The GPU runs the same text (benchmarks/bench_kernels.py checks its results against the reference); the CPU
interpreter runs the plain-Triton twin, so this is where the PTX itself is tested in CI."""
from hypothesis import given, settings
from hypothesis import strategies as st

from qcomp.codegen import lut_regs
from qcomp.codegen.kernel_spec import KernelSpec

from ptx_model import M32, run_ptx


@settings(max_examples=300, deadline=None)
@given(bits=st.sampled_from([2, 4]), word=st.integers(0, M32), data=st.data())
def test_lut_pairs_ptx_looks_up_every_code(bits, word, data):
    spec = KernelSpec(bits=bits, grid="lut", variant="gemv", block_m=1)
    assert lut_regs.eligible(spec)
    table = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=2 ** bits, max_size=2 ** bits))  # fp16 bit patterns
    H, nt = 16 // bits, lut_regs.n_tables(spec)
    regs = {f"${H}": word}
    for k in range(nt):  # the byte planes table_setup builds: low bytes, then high bytes, 4 entries per register
        ents = table[4 * k: 4 * k + 4]
        regs[f"${H + 1 + k}"] = sum((e & 0xFF) << (8 * i) for i, e in enumerate(ents))
        regs[f"${H + 1 + nt + k}"] = sum((e >> 8) << (8 * i) for i, e in enumerate(ents))
    text = lut_regs._ptx_w4() if bits == 4 else lut_regs._ptx_w2()
    out = run_ptx(text, regs)
    mask = 2 ** bits - 1
    for jj in range(H):
        lo, hi = table[(word >> (jj * bits)) & mask], table[(word >> (jj * bits + 16)) & mask]
        assert out[f"${jj}"] == lo | hi << 16, f"pair {jj} of word {word:#010x}"


def test_lut_regs_scope():
    assert not lut_regs.eligible(KernelSpec(bits=3, grid="lut", variant="gemv", block_m=1))
    assert not lut_regs.eligible(KernelSpec(bits=2, grid="lut", p=2, group_size=256, variant="gemv", block_m=1, block_k=256))
    assert not lut_regs.eligible(KernelSpec(bits=4, grid="uniform", variant="gemv", block_m=1))


@settings(max_examples=300, deadline=None)
@given(codes=st.tuples(st.integers(0, 15), st.integers(0, 15)),
       table=st.lists(st.integers(0, 0xFFFF), min_size=16, max_size=16))
def test_lut_one_ptx_looks_up_two_codes(codes, table):
    """The tensor-core tile's lookup: pack 2, so each argument arrives as two operands ($1, $2 the codes; $3 + 2k the
    low-byte plane k, $11 + 2k the high-byte plane k; triton's operand order, checked in its PTX)."""
    regs = {"$1": codes[0], "$2": codes[1]}
    for k in range(4):
        ents = table[4 * k: 4 * k + 4]
        for copy in (0, 1):
            regs[f"${3 + 2 * k + copy}"] = sum((e & 0xFF) << (8 * i) for i, e in enumerate(ents))
            regs[f"${11 + 2 * k + copy}"] = sum((e >> 8) << (8 * i) for i, e in enumerate(ents))
    out = run_ptx(lut_regs._ptx_one(), regs)
    assert out["$0"] == table[codes[0]] | table[codes[1]] << 16
    assert lut_regs.tile_eligible(KernelSpec(bits=3, grid="lut", variant="gemm", block_m=32))
    assert not lut_regs.tile_eligible(KernelSpec(bits=5, grid="lut", variant="gemm", block_m=32))
