"""torch.ops.qcomp.attention (codegen/attention.py, attention_kernel.py): the decode kernel (CPU interpreter) against torch's
scaled_dot_product_attention on fresh random inputs, the calls it hands back to torch, and the runtimes' routing."""
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qcomp.codegen import attention as da
from qcomp.codegen import attention_kernel as dk

from conftest import guarded


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("QCOMP_FORCE_TRITON", "1")


def _inputs(b, h, r, s, d, mask, seed):
    """q [b, h, r, d], k and v [b, h, s, d], the mask; each inside NaN poison (a read past its end shows)."""
    q, k, v, m = _plain_inputs(b, h, r, s, d, mask, seed)
    return guarded(q), guarded(k), guarded(v), guarded(m)


def _plain_inputs(b, h, r, s, d, mask, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g).half() for n in (r, s, s))
    if mask == "bool":  # the decode step's mask: positions <= pos
        m = (torch.arange(s) <= int(torch.randint(0, s, (1,), generator=g))).view(1, 1, 1, s)
    elif mask == "bool_rows":
        m = torch.rand(b, 1, r, s, generator=g) > 0.3
        m[..., 0] = True  # every row attends to something (torch gives NaN otherwise, and so does the kernel)
    elif mask == "additive":
        m = torch.randn(1, h, r, s, generator=g).half()
    else:
        m = None
    return q, k, v, m


@settings(max_examples=8, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 4), r=st.integers(1, 16), s=st.integers(1, 300),
       d=st.sampled_from([16, 32, 64, 128]), mask=st.sampled_from([None, "bool", "bool_rows", "additive"]),
       seed=st.integers(0, 2**16))
def test_kernel_matches_torch_attention(b, h, r, s, d, mask, seed):
    os.environ["TRITON_INTERPRET"], os.environ["QCOMP_FORCE_TRITON"] = "1", "1"
    try:
        q, k, v, m = _inputs(b, h, r, s, d, mask, seed)
        assert da.kernel_unsupported(q, k, v, m, 0.0, False, False) is None
        scale = 0.3 if seed % 2 else None
        got = da.attention(q, k, v, attn_mask=m, scale=scale)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=scale,
                                             attn_mask=m if m is None or m.dtype == torch.bool else m.float())
        assert got.shape == ref.shape and got.dtype == q.dtype
        assert torch.allclose(got.float(), ref, atol=2e-3, rtol=1e-2), (got.float() - ref).abs().max()
    finally:
        del os.environ["TRITON_INTERPRET"], os.environ["QCOMP_FORCE_TRITON"]


def test_split_ranges_are_merged(interpreter, monkeypatch):
    # one program per key block and (b, h): the merge of 5 ranges, one of them fully masked
    monkeypatch.setattr(dk, "_splits", lambda bh, steps, device: (steps, 1))  # 5 ranges (<= MAX_SPLIT)
    q, k, v, _ = _inputs(1, 2, 4, 300, 32, None, 1)
    m = torch.ones(1, 1, 1, 300, dtype=torch.bool)
    m[..., 64:128] = False
    got = da.attention(q, k, v, attn_mask=m)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=m)
    assert torch.allclose(got.float(), ref, atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("case", ["rows", "causal", "dropout", "float32", "odd_d", "gqa", "cpu"])
def test_other_calls_run_torch_attention(case, interpreter, monkeypatch):
    q, k, v, _ = _inputs(1, 2, 4, 40, 32, None, 2)
    kw = {}
    if case == "rows":
        q = torch.randn(1, 2, 17, 32).half()
    elif case == "causal":
        kw = {"is_causal": True}
    elif case == "dropout":
        kw = {"dropout_p": 0.5}
    elif case == "float32":
        q, k, v = q.float(), k.float(), v.float()
    elif case == "odd_d":
        q, k, v = (t[..., :24].contiguous() for t in (q, k, v))
    elif case == "gqa":
        q = torch.randn(1, 4, 1, 32).half()
        kw = {"enable_gqa": True}
    elif case == "cpu":
        monkeypatch.delenv("QCOMP_FORCE_TRITON")
    why = da.kernel_unsupported(q, k, v, None, kw.get("dropout_p", 0.0), kw.get("is_causal", False),
                                kw.get("enable_gqa", False))
    assert why, "the kernel must not take this call"
    monkeypatch.setattr(dk, "decode_attention", lambda *a, **k: pytest.fail("kernel ran"))
    torch.manual_seed(0)
    got = da.attention(q, k, v, **kw)
    torch.manual_seed(0)
    assert torch.equal(got, F.scaled_dot_product_attention(q, k, v, **kw))


def test_runtimes_route_torch_attention_to_the_op():
    from qcomp.runtime.call_targets import runtime_callable

    assert runtime_callable("aten.scaled_dot_product_attention.default") is da.attention
    assert runtime_callable("torch.nn.functional.scaled_dot_product_attention") is da.attention
    assert runtime_callable("aten.mul.Tensor") is torch.ops.aten.mul.Tensor


def test_fake_shape_for_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = torch.empty(2, 8, 4, 64), torch.empty(2, 8, 100, 64), torch.empty(2, 8, 100, 32)
        out = torch.ops.qcomp.attention(q, k, v, None, 0.0, False, None, False)
    assert tuple(out.shape) == (2, 8, 4, 32)


@settings(max_examples=6, deadline=None)
@given(h=st.integers(1, 4), r=st.integers(1, 8), s=st.integers(2, 200), d=st.sampled_from([16, 64]),
       seed=st.integers(0, 2**16))
def test_cached_attention_reads_the_new_row(h, r, s, d, seed):
    os.environ["TRITON_INTERPRET"], os.environ["QCOMP_FORCE_TRITON"] = "1", "1"
    try:
        q, kc, vc, _ = _inputs(1, h, r, s, d, None, seed)
        g = torch.Generator().manual_seed(seed + 1)
        kn, vn = (guarded(torch.randn(1, h, 1, d, generator=g).half()) for _ in range(2))
        pos = torch.tensor([seed % s])
        m = (torch.arange(s) <= pos).view(1, 1, 1, s)
        assert da.cached_unsupported(q, kc, vc, kn, vn, pos, m) is None
        got = torch.ops.qcomp.cached_attention(q, kc, vc, kn, vn, pos, m, None)
        k, v = kc.index_copy(2, pos, kn), vc.index_copy(2, pos, vn)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=m)
        assert torch.allclose(got.float(), ref, atol=2e-3, rtol=1e-2), (got.float() - ref).abs().max()
        assert torch.equal(kc, _inputs(1, h, r, s, d, None, seed)[1]), "the cache is not written"
    finally:
        del os.environ["TRITON_INTERPRET"], os.environ["QCOMP_FORCE_TRITON"]


def test_cached_attention_reference_on_cpu():
    q, kc, vc, _ = _inputs(2, 2, 3, 20, 24, None, 5)  # D = 24: torch's attention, after the index_copy
    kn, vn = torch.randn(2, 2, 1, 24).half(), torch.randn(2, 2, 1, 24).half()
    pos = torch.tensor([7])
    got = torch.ops.qcomp.cached_attention(q, kc, vc, kn, vn, pos, None, 0.5)
    ref = F.scaled_dot_product_attention(q, kc.index_copy(2, pos, kn), vc.index_copy(2, pos, vn), scale=0.5)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("pos", [-1, 40])
def test_cached_attention_poisons_a_row_outside_the_cache(interpreter, pos):
    # index_copy refuses such a row; the kernel cannot raise from inside a CUDA graph, so its result is NaN, never an
    # attention that silently left the new row out
    q, kc, vc, _ = _inputs(1, 2, 4, 40, 32, None, 3)
    kn, vn = torch.randn(1, 2, 1, 32).half(), torch.randn(1, 2, 1, 32).half()
    got = torch.ops.qcomp.cached_attention(q, kc, vc, kn, vn, torch.tensor([pos]), None, None)
    assert torch.isnan(got).all()
    with pytest.raises((IndexError, RuntimeError)):
        kc.index_copy(2, torch.tensor([pos]), kn)


def test_mask_of_another_float_dtype_goes_to_torch(interpreter):
    q, k, v, _ = _inputs(1, 2, 4, 40, 32, None, 4)
    assert "mask dtype" in da.kernel_unsupported(q, k, v, torch.zeros(1, 1, 4, 40), 0.0, False, False)
