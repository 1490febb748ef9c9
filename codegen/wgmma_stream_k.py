"""Stream-K for the wgmma TMA loop (KernelSpec.stream_k): text for gemm_wgmma.kernel_lines, and the launch's sizes.

Why: a data-parallel grid runs whole output tiles, so a shape whose tiles do not fill the GPU a whole number of times
leaves part of it idle in the last wave (28672x8192 at M=256 in m128 n128 tiles: 448 tiles on 2 x 132 program slots,
1.7 waves, so the second runs 70 % full). Here a fixed grid of P programs (programs per SM x SMs, at most the units)
shares out the U = tiles x K steps (tile, K step) units, tile-major: program p runs units [p U / P, (p + 1) U / P),
so every program has the same work to within one K step. A program's range crosses tiles: each tile it touches is a
segment, run as the TMA loop runs a split-K part (K steps lo..hi of one tile) and the ring's stages and phases count
on across segments (g). A segment that covers its whole tile stores y; the parts of a split tile go to the
workspace, two slots per program (0: the program's first segment, 1: its last; only those two can be parts), and the
last part to finish (a counter per tile) sums them in program order, so the result does not depend on timing.
Tile t's parts are those of programs first(t)..last(t), the programs holding its first and last unit; with P <= U
every program has a unit, so each of them contributes one part.
"""
from __future__ import annotations

from .gemm_wgmma import Y_TILE, barrier_name, out_lines, ring_alloc_lines, sum_lines


def units(m: int, n: int, k: int, block_m: int, block_n: int) -> int:
    """The (output tile, K step) units of a launch: tiles x K steps of 128."""
    return -(-m // block_m) * -(-n // block_n) * (k // 128)


def programs(per_sm: int, sms: int, m: int, n: int, k: int, block_m: int, block_n: int) -> int:
    """The grid of a stream-K launch: per_sm programs on each of sms SMs, at most one per unit (so each has one)."""
    if per_sm < 1:
        raise ValueError(f"a stream_k launch takes its programs per SM as split_k (>= 1), got {per_sm}")
    return min(per_sm * sms, units(m, n, k, block_m, block_n))


def workspace_floats(progs: int, block_m: int, block_n: int) -> int:
    """fp32 workspace of a stream-K launch: two tile slots per program."""
    return 2 * progs * block_m * block_n


def segments(pid: int, progs: int, total: int, n_steps: int) -> list[tuple[int, int, int, int | None]]:
    """Program pid's segments as the kernel runs them: (tile, lo, hi, slot), slot None for a whole tile (stored to
    y), else the workspace slot of its part (2 pid: the program's first segment, 2 pid + 1: a later one)."""
    u0, u1 = pid * total // progs, (pid + 1) * total // progs
    out, u = [], u0
    while u < u1:
        tile = u // n_steps
        lo = u - tile * n_steps
        hi = min(n_steps, lo + (u1 - u))
        out.append((tile, lo, hi, None if hi - lo == n_steps else 2 * pid + (u != u0)))
        u += hi - lo
    return out


def parts(tile: int, progs: int, total: int, n_steps: int) -> list[tuple[int, int]]:
    """(program, slot) of every part of a split tile, in the order the kernel sums them."""
    t0 = tile * n_steps
    first, last = ((t0 + 1) * progs - 1) // total, ((t0 + n_steps) * progs - 1) // total
    return [(q, 2 * q + (q * total // progs < t0)) for q in range(first, last + 1)]


def _indent(lines: list[str]) -> list[str]:
    return ["    " + ln if ln else ln for ln in lines]


def body_lines(s, version: tuple[int, int], layouts: list[str], loop: list[str]) -> list[str]:
    """The kernel body after its signature: the program's unit range, the ring, then per segment the TMA loop
    (`loop`, made with s.stream_k: no ring allocation, stages counted from g) and the segment's store or part."""
    bar = barrier_name(version)
    tile_elems = "(BLOCK_M * BLOCK_N)"
    fixup = [
        "if hi - lo == n_steps:  # the whole tile: straight to y",
        f"    gl.store({Y_TILE},",
        "             res.to(gl.float16), mask=mask_mn)",
        "else:  # a part: to this program's slot (0: its first segment, 1: its last); the last part sums them",
        "    t_off = gl.expand_dims(gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, out_l)), 1) * BLOCK_N + \\",
        "        gl.expand_dims(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, out_l)), 0)",
        "    slot = 2 * pid + (u != u0).to(gl.int32)",
        f"    gl.store(ws_ptr + slot.to(gl.int64) * {tile_elems} + t_off, res)",
        f"    {bar}()  # all threads' parts are written before one thread announces them (release)",
        "    t0 = tile.to(gl.int64) * n_steps  # the tile's first unit",
        "    first = (((t0 + 1) * progs - 1) // total).to(gl.int32)  # the programs holding its first and last unit",
        "    last = (((t0 + n_steps) * progs - 1) // total).to(gl.int32)",
        "    done = gl.atomic_add(cnt_ptr + tile, 1, sem=\"acq_rel\", scope=\"gpu\")",
        "    if done == last - first:",
        "        gl.store(cnt_ptr + tile, 0)  # zero again for the next launch",
        *["        " + ln for ln in sum_lines(
            s, ["for q in range(first, last + 1):  # q's part is its last segment if q started before the tile",
                "    q_slot = 2 * q + (q.to(gl.int64) * total // progs < t0).to(gl.int32)"],
            f"ws_ptr + q_slot.to(gl.int64) * {tile_elems} + gl.expand_dims(rows_c, 1) * BLOCK_N + "
            "gl.expand_dims(cols_c, 0)", False)],
    ]
    return [
        "    # stream-K (wgmma_stream_k.py): this program's units [u0, u1) of the (tile, K step) units, tile-major, tiles",
        "    # M block-major: every program runs at once, and programs p + i P / num_m (i < num_m) run the M blocks of",
        "    # the same N block at about the same K step, so its words are read from DRAM about once",
        "    num_n = gl.cdiv(N, BLOCK_N)",
        "    n_steps = K // 128",
        "    pid = gl.program_id(0)",
        "    progs = gl.num_programs(0)",
        "    total = gl.cdiv(M, BLOCK_M) * num_n * n_steps",
        "    u0 = (pid.to(gl.int64) * total // progs).to(gl.int32)",
        "    u1 = ((pid + 1).to(gl.int64) * total // progs).to(gl.int32)",
        *layouts,
        *ring_alloc_lines(s),
        "    u = u0",
        "    g = u0 * 0  # K steps run so far: the ring's stages and phases count on across segments",
        "    while u < u1:  # one segment: K steps lo..hi of one tile",
        f"        {bar}()  # every warp is done with the last segment's stages before they are refilled",
        "        tile = u // n_steps",
        "        lo = u - tile * n_steps",
        "        hi = gl.minimum(n_steps, lo + (u1 - u))",
        "        pid_n = tile % num_n",
        "        pid_m = tile // num_n",
        "        off_m = pid_m * BLOCK_M",
        *_indent(loop),
        *_indent([ln for ln in out_lines(s, "lo == 0:  # the part with the tile's first K step adds the bias")
                  if not ln.startswith("    y_ptrs =")]),
        *_indent(_indent(fixup)),
        "        g += hi - lo",
        "        u += hi - lo",
        "    for p in gl.static_range(STAGES):",
        "        mbarrier.invalidate(bars.index(p))",
    ]
