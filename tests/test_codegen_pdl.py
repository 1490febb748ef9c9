"""Programmatic dependent launch (codegen/ops.py pdl_level): a gemv kernel may start while the kernel before it
still runs, so above its griddepcontrol.wait it may touch only what no kernel writes: the packed weights, scales,
offsets, lookup table and Hadamard signs. Checked on the generated source of any gemv spec."""
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from qcomp.codegen.kernel_spec import KernelSpec, KernelSpecError
from qcomp.codegen.render import kernel_source

PARAMETER_POINTERS = {"w_grp", "s_ptr", "o_ptr", "lut_ptr", "sgn_ptr"}  # never written by a kernel
ACCESS = re.compile(r"tl\.(load|store|atomic_\w+)\(\s*(\w+)")


def before_and_after_wait(src: str) -> tuple[str, str]:
    body = src[src.index("def qlinear_"):]
    body = body[body.index("):") + 2:]  # past the signature
    i = body.index("tl.extra.cuda.gdc_wait()")
    return body[:i], body[i:]


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(1, 8), grid=st.sampled_from(["uniform", "uniform_asym", "lut"]),
       had=st.sampled_from([0, 128]), scratch=st.sampled_from(["", "scratch", "once"]), stages=st.integers(1, 3),
       block_m=st.sampled_from([1, 2, 4, 8, 16]), act=st.sampled_from(["fp16", "bf16"]),
       prologue=st.sampled_from(["", "norm", "glu"]), group=st.sampled_from([32, 128]), cpa=st.booleans())
def test_gemv_touches_only_parameters_before_its_wait(bits, grid, had, scratch, stages, block_m, act, prologue,
                                                        group, cpa):
    try:
        spec = KernelSpec(bits=bits, grid=grid, p=1, group_size=group, had_block=had,
                          had_scratch=scratch == "scratch" and had > 0, had_once=scratch == "once" and had > 0,
                          variant="gemv", block_m=block_m, block_n=64, block_k=128, num_warps=2, num_stages=stages,
                          act_dtype=act, x_norm=prologue == "norm", x_glu=prologue == "glu",
                          cp_async=cpa and stages > 1)
    except KernelSpecError:
        return
    pre, post = before_and_after_wait(kernel_source(spec))
    early = {(op, ptr) for op, ptr in ACCESS.findall(pre)}
    assert all(op == "load" and ptr in PARAMETER_POINTERS for op, ptr in early), early
    # the level-2 signal comes after the wait, never before it
    assert "gdc_launch_dependents" not in pre and "gdc_launch_dependents" in post
    assert ACCESS.search(post)  # (the activations are read after it)


def test_attention_waits_before_it_reads_anything():
    """The decode-attention kernel reads only activations and caches (all written by earlier kernels): its wait and
    the level-2 signal come before its first load."""
    from pathlib import Path

    import qcomp.codegen.attention_kernel as attention_kernel

    src = Path(attention_kernel.__file__).read_text()
    body = src[src.index("def _decode_attention_kernel("):]
    body = body[body.index("):") + 2:]
    first_access = ACCESS.search(body).start()
    assert body.index("tl.extra.cuda.gdc_wait()") < body.index("gdc_launch_dependents()") < first_access
