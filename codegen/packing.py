"""Packed storage of b-bit codes (b in 1..8) for the generated kernels (layout version 4, see PACKING.md).

A code of `bits` bits is split into power-of-two *planes*, widest first, low bits in the widest plane
(7 = 4+2+1: bits 0..3 in the 4-bit plane, bits 4..5 in the 2-bit plane, bit 6 in the 1-bit plane).
The codes of a row are padded with zeros to a multiple of PACK_TILE = 128 codes. Within one tile, a plane
of width w has W = 4*w words (16*w bytes: whole 16-byte vectors) and S = 32/w slots per word, and code t
(0..127) of the tile sits in word t % W at bit offset (t // W) * w ("strided" interleave): word i holds
codes i, i+W, i+2W, ... So one shift-and-mask of a whole [rows, W] tile of words yields the codes of one
slot for every word at once, in the layout the words were loaded in (no register reshapes).
Row groups (v4): rows are padded to a multiple of ROW_GROUP = 16 and stored group by group; in a group, plane by
plane; in a plane, tile by tile; in a tile, row by row: the W words of row r, tile q of a plane sit at word
    group * 16 * row_words + 16 * plane_words * bit_offset + q * 16 * W + r * W
(row_words = Mpad * bits / 32, plane_words = Mpad / 32). A kernel's K step over 16 rows is one contiguous run
of 16 * W words (1 KB for 4 bits), instead of 16 runs of W words a whole row apart (v3): long DRAM bursts.
packed: int32 [Npad, row_words], Npad = ceil(N / 16) * 16 (the pad rows hold zeros); a [Npad, row_words]
tensor only by shape: a row of it is not a row of the matrix.
"""
from __future__ import annotations

import torch

PACKING_VERSION = 4
PACK_TILE = 128  # codes; a multiple of 32 so that every plane row is whole int32 words
ROW_GROUP = 16  # rows stored together per (plane, tile): see the module docstring


def planes(bits: int) -> list[tuple[int, int]]:
    """[(width, bit_offset), ...] widest first: the binary decomposition of `bits`."""
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
    out, off = [], 0
    for w in (8, 4, 2, 1):
        if bits & w:
            out.append((w, off))
            off += w
    return out


def padded_codes(m: int) -> int:
    """Codes per row after padding to whole pack tiles."""
    return -(-m // PACK_TILE) * PACK_TILE


def padded_rows(n: int) -> int:
    """Rows after padding to whole row groups."""
    return -(-n // ROW_GROUP) * ROW_GROUP


def packed_shape(n: int, m: int, bits: int) -> tuple[int, int]:
    planes(bits)  # validates bits
    return (padded_rows(n), padded_codes(m) * bits // 32)


def _group_rows(rows: torch.Tensor, bits: int, mp: int) -> torch.Tensor:
    """Row-major words [Npad, row_words] (each row its planes' tiles in order: the v3 layout) -> the v4 memory
    order of the same shape: per group of ROW_GROUP rows, plane by plane, tile by tile, row by row."""
    tiles, parts, col = mp // PACK_TILE, [], 0
    for w, _ in planes(bits):
        nw = 4 * w
        seg = rows[:, col: col + tiles * nw]  # [groups * 16 rows, tiles * W] -> [groups, tiles, 16 rows, W]
        parts.append(seg.reshape(-1, ROW_GROUP, tiles, nw).permute(0, 2, 1, 3).reshape(-1, tiles * ROW_GROUP * nw))
        col += tiles * nw
    return torch.cat(parts, dim=1).reshape(rows.shape).contiguous()


def _ungroup_rows(packed: torch.Tensor, bits: int, mp: int) -> torch.Tensor:
    """The inverse of _group_rows."""
    tiles, parts, col = mp // PACK_TILE, [], 0
    groups = packed.reshape(packed.shape[0] // ROW_GROUP, -1)  # one row per row group
    for w, _ in planes(bits):
        nw = 4 * w
        seg = groups[:, col: col + tiles * ROW_GROUP * nw].reshape(-1, tiles, ROW_GROUP, nw)
        parts.append(seg.permute(0, 2, 1, 3).reshape(packed.shape[0], tiles * nw))
        col += tiles * ROW_GROUP * nw
    return torch.cat(parts, dim=1)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [N, M] (each < 2**bits) -> int32 packed [Npad, Mpad*bits/32] (layout v4, row groups of 16)."""
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise ValueError(f"pack_codes expects uint8 codes [N, M], got {codes.dtype} {tuple(codes.shape)}")
    pl = planes(bits)
    n, m = codes.shape
    if m and int(codes.max()) >= 2**bits:
        raise ValueError(f"a code exceeds {bits} bits (max {int(codes.max())}); pass the code width bits*p")
    mp = padded_codes(m)
    c = torch.zeros(padded_rows(n), mp, dtype=torch.int64, device=codes.device)  # zero pad rows and columns
    c[:n, :m] = codes.to(torch.int64)
    parts = []
    tiles = mp // PACK_TILE
    for w, off in pl:
        slots, nw = 32 // w, 4 * w  # slots per word, words per tile
        v = ((c >> off) & ((1 << w) - 1)).reshape(-1, tiles, slots, nw)  # code t = slot * nw + word
        shifts = (torch.arange(slots, dtype=torch.int64, device=codes.device) * w).reshape(1, 1, slots, 1)
        word = (v << shifts).sum(2).reshape(-1, tiles * nw)  # < 2**32, exact in int64
        parts.append(torch.where(word >= 2**31, word - 2**32, word).to(torch.int32))
    return _group_rows(torch.cat(parts, dim=1), bits, mp)


def unpack_codes(packed: torch.Tensor, bits: int, n: int, m: int) -> torch.Tensor:
    """int32 packed [Npad, Mpad*bits/32] (layout v4) -> uint8 codes [N, M]."""
    if tuple(packed.shape) != packed_shape(n, m, bits):
        raise ValueError(
            f"packed shape {tuple(packed.shape)} does not match {packed_shape(n, m, bits)} for {m} codes of {bits} bits"
        )
    if packed.dtype != torch.int32:
        raise ValueError(f"packed must be int32 (layout version {PACKING_VERSION}), got {packed.dtype}")
    mp = padded_codes(m)
    npad = padded_rows(n)
    p64 = _ungroup_rows(packed.to(torch.int64) & 0xFFFFFFFF, bits, mp)  # row-major words
    code = torch.zeros(npad, mp, dtype=torch.int64, device=packed.device)
    col = 0
    tiles = mp // PACK_TILE
    for w, off in planes(bits):
        slots, nw = 32 // w, 4 * w
        words = p64[:, col: col + tiles * nw].reshape(npad, tiles, 1, nw)
        shifts = (torch.arange(slots, dtype=torch.int64, device=packed.device) * w).reshape(1, 1, slots, 1)
        v = (words >> shifts) & ((1 << w) - 1)  # [n, tiles, slot, word]: code t = slot * nw + word
        code |= v.reshape(npad, mp) << off
        col += tiles * nw
    return code[:n, :m].to(torch.uint8)


def repack_v3(packed: torch.Tensor, bits: int, n: int, m: int) -> torch.Tensor:
    """Codes packed in layout v3 (int32 [N, Mpad*bits/32]: the row-major words of _group_rows, no pad rows) ->
    layout v4, a permutation of the words. For artifacts written before the row groups: qcomp.load converts them
    instead of refusing them."""
    mp = padded_codes(m)
    if tuple(packed.shape) != (n, mp * bits // 32) or packed.dtype != torch.int32:
        raise ValueError(f"a v3 packed tensor of {n} rows x {m} codes of {bits} bits is int32 {(n, mp * bits // 32)}, "
                         f"got {packed.dtype} {tuple(packed.shape)}")
    rows = torch.nn.functional.pad(packed, (0, 0, 0, padded_rows(n) - n))  # zero pad rows
    return _group_rows(rows, bits, mp)
