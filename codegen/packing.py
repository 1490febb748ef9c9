"""Packed storage of b-bit codes (b in 1..8) for the generated kernels (layout version 5, see PACKING.md).

A code of `bits` bits is split into *planes*, widest first, low bits in the widest plane: the binary
decomposition (7 = 4+2+1: bits 0..3 in the 4-bit plane, bits 4..5 in the 2-bit plane, bit 6 in the 1-bit plane),
except 3 bits, which is one "trio" plane (v5; v4 stored it as 2+1). The codes of a row are padded with zeros to a
multiple of PACK_TILE = 128 codes. Within one tile, a plane of width w has W = 4*w words (16*w bytes: whole 16-byte
vectors).
Power-of-two widths: S = 32/w slots per word, code t (0..127) of the tile in word t % W at bit offset (t // W) * w
("strided" interleave): word i holds codes i, i+W, i+2W, ... So one shift-and-mask of a whole [rows, W] tile of
words yields the codes of one slot for every word at once, in the layout the words were loaded in.
Trio (3 bits, 12 words): column i = t % 4, slot g = t // 4 (0..31); half h = g // 16, r = g % 16. r < 15: word
4 * (r // 5) + i, bit 3 * (r % 5) + 16 * h (five codes in each 16-bit half of a word, bits 15 and 31 spare);
r = 15 (slots 15 and 31): spread over the spare bits of the column's three words, bit 15 + 16 * h of word 4 * e + i
holding code bit e. Slots g and g + 16 are the two halves of one word (or of the spare bits): a kernel decodes
such a pair per 32-bit op (two fp16 halves), as for one plane of 1, 2 or 4 bits.
Row groups (v4): rows are padded to a multiple of ROW_GROUP = 16 and stored group by group; in a group, plane by
plane; in a plane, tile by tile; in a tile, row by row: the W words of row r, tile q of a plane sit at word
    group * 16 * row_words + 16 * plane_words * bit_offset + q * 16 * W + r * W
(row_words = Mpad * bits / 32, plane_words = Mpad / 32). The trio plane's tile is stored word by word, column by
column, row by row instead: word e of column i of row r at group * 16 * row_words + q * 192 + e * 64 + i * 16 + r
(so a kernel's 16-byte vectors run along rows: a thread holds one column of four rows and reuses its activations).
A kernel's K step over 16 rows is one contiguous run of 16 * W words (1 KB for 4 bits), instead of 16 runs of W
words a whole row apart (v3): long DRAM bursts.
packed: int32 [Npad, row_words], Npad = ceil(N / 16) * 16 (the pad rows hold zeros); a [Npad, row_words]
tensor only by shape: a row of it is not a row of the matrix.
"""
from __future__ import annotations

import torch

PACKING_VERSION = 5
READABLE_VERSIONS = (3, 4, 5)  # older layouts are converted by upgrade()
PACK_TILE = 128  # codes; a multiple of 32 so that every plane row is whole int32 words
ROW_GROUP = 16  # rows stored together per (plane, tile): see the module docstring
TRIO = 3  # the one width stored as ten codes per word plus two spread over spare bits (module docstring)


def _binary_planes(bits: int) -> list[tuple[int, int]]:
    out, off = [], 0
    for w in (8, 4, 2, 1):
        if bits & w:
            out.append((w, off))
            off += w
    return out


def planes(bits: int, version: int = PACKING_VERSION) -> list[tuple[int, int]]:
    """[(width, bit_offset), ...] widest first: the binary decomposition of `bits`, except one trio plane for
    3 bits from layout v5 on."""
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
    return [(TRIO, 0)] if bits == TRIO and version >= 5 else _binary_planes(bits)


def trio_word(g: int) -> int | None:
    """Word (0..2) of the trio column that holds slot g (0..31); None for slots 15 and 31 (one code bit in the
    spare bit of each of the three words)."""
    if not 0 <= g < 32:
        raise ValueError(f"a trio column has slots 0..31, got {g}")
    r = g % 16
    return None if r == 15 else r // 5


def trio_bit(g: int) -> int:
    """Bit of slot g (0..31) of the trio plane in its word (trio_word), or the spare bit (15 or 31) of slots 15
    and 31."""
    trio_word(g)  # validates g
    r = g % 16
    return 16 * (g // 16) + (15 if r == 15 else 3 * (r % 5))


def padded_codes(m: int) -> int:
    """Codes per row after padding to whole pack tiles."""
    return -(-m // PACK_TILE) * PACK_TILE


def padded_rows(n: int) -> int:
    """Rows after padding to whole row groups."""
    return -(-n // ROW_GROUP) * ROW_GROUP


def packed_shape(n: int, m: int, bits: int) -> tuple[int, int]:
    planes(bits)  # validates bits
    return (padded_rows(n), padded_codes(m) * bits // 32)


def _group_rows(rows: torch.Tensor, pl: list[tuple[int, int]], mp: int) -> torch.Tensor:
    """Row-major words [Npad, row_words] (each row its planes' tiles in order: the v3 layout) -> the v4 memory
    order of the same shape: per group of ROW_GROUP rows, plane by plane, tile by tile, row by row."""
    tiles, parts, col = mp // PACK_TILE, [], 0
    for w, _ in pl:
        nw = 4 * w
        seg = rows[:, col: col + tiles * nw]  # [groups * 16 rows, tiles * W] -> [groups, tiles, 16 rows, W]
        if w == TRIO:  # [groups, tiles, word, column, 16 rows]: rows innermost
            seg = seg.reshape(-1, ROW_GROUP, tiles, 3, 4).permute(0, 2, 3, 4, 1)
        else:
            seg = seg.reshape(-1, ROW_GROUP, tiles, nw).permute(0, 2, 1, 3)
        parts.append(seg.reshape(-1, tiles * ROW_GROUP * nw))
        col += tiles * nw
    return torch.cat(parts, dim=1).reshape(rows.shape).contiguous()


def _ungroup_rows(packed: torch.Tensor, pl: list[tuple[int, int]], mp: int) -> torch.Tensor:
    """The inverse of _group_rows."""
    tiles, parts, col = mp // PACK_TILE, [], 0
    groups = packed.reshape(packed.shape[0] // ROW_GROUP, -1)  # one row per row group
    for w, _ in pl:
        nw = 4 * w
        seg = groups[:, col: col + tiles * ROW_GROUP * nw]
        if w == TRIO:
            seg = seg.reshape(-1, tiles, 3, 4, ROW_GROUP).permute(0, 4, 1, 2, 3)
        else:
            seg = seg.reshape(-1, tiles, ROW_GROUP, nw).permute(0, 2, 1, 3)
        parts.append(seg.reshape(packed.shape[0], tiles * nw))
        col += tiles * ROW_GROUP * nw
    return torch.cat(parts, dim=1)


def _plane_words(v: torch.Tensor, w: int, tiles: int) -> torch.Tensor:
    """One plane's codes (int64 [R, tiles * 128], each < 2**w) -> its words (int64 [R, tiles * 4w], < 2**32)."""
    if w == TRIO:
        v = v.reshape(-1, tiles, 32, 4)  # [row, tile, slot g, column i]
        words = torch.zeros(v.shape[0], tiles, 3, 4, dtype=torch.int64, device=v.device)
        for g in range(32):
            word = trio_word(g)
            if word is not None:
                words[:, :, word] |= v[:, :, g] << trio_bit(g)
            else:
                for e in range(3):
                    words[:, :, e] |= ((v[:, :, g] >> e) & 1) << trio_bit(g)
        return words.reshape(-1, tiles * 12)
    slots, nw = 32 // w, 4 * w
    v = v.reshape(-1, tiles, slots, nw)  # code t = slot * nw + word
    shifts = (torch.arange(slots, dtype=torch.int64, device=v.device) * w).reshape(1, 1, slots, 1)
    return (v << shifts).sum(2).reshape(-1, tiles * nw)


def _plane_codes(words: torch.Tensor, w: int, tiles: int) -> torch.Tensor:
    """The inverse of _plane_words (words: int64 [R, tiles * 4w], < 2**32)."""
    if w == TRIO:
        words = words.reshape(-1, tiles, 3, 4)
        v = torch.zeros(words.shape[0], tiles, 32, 4, dtype=torch.int64, device=words.device)
        for g in range(32):
            word = trio_word(g)
            if word is not None:
                v[:, :, g] = (words[:, :, word] >> trio_bit(g)) & 7
            else:
                for e in range(3):
                    v[:, :, g] |= ((words[:, :, e] >> trio_bit(g)) & 1) << e
        return v.reshape(-1, tiles * PACK_TILE)
    slots, nw = 32 // w, 4 * w
    words = words.reshape(-1, tiles, 1, nw)
    shifts = (torch.arange(slots, dtype=torch.int64, device=words.device) * w).reshape(1, 1, slots, 1)
    return ((words >> shifts) & ((1 << w) - 1)).reshape(-1, tiles * PACK_TILE)  # [n, tile, slot, word]


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [N, M] (each < 2**bits) -> int32 packed [Npad, Mpad*bits/32] (layout v5, row groups of 16)."""
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
    for w, off in pl:
        word = _plane_words((c >> off) & ((1 << w) - 1), w, mp // PACK_TILE)  # < 2**32, exact in int64
        parts.append(torch.where(word >= 2**31, word - 2**32, word).to(torch.int32))
    return _group_rows(torch.cat(parts, dim=1), pl, mp)


def unpack_codes(packed: torch.Tensor, bits: int, n: int, m: int, version: int = PACKING_VERSION) -> torch.Tensor:
    """int32 packed [Npad, Mpad*bits/32] (layout `version`, 4 or 5) -> uint8 codes [N, M]."""
    if tuple(packed.shape) != packed_shape(n, m, bits):
        raise ValueError(
            f"packed shape {tuple(packed.shape)} does not match {packed_shape(n, m, bits)} for {m} codes of {bits} bits"
        )
    if packed.dtype != torch.int32:
        raise ValueError(f"packed must be int32 (layout version {version}), got {packed.dtype}")
    mp, pl = padded_codes(m), planes(bits, version)
    p64 = _ungroup_rows(packed.to(torch.int64) & 0xFFFFFFFF, pl, mp)  # row-major words
    code = torch.zeros(padded_rows(n), mp, dtype=torch.int64, device=packed.device)
    col, tiles = 0, mp // PACK_TILE
    for w, off in pl:
        code |= _plane_codes(p64[:, col: col + tiles * 4 * w], w, tiles) << off
        col += tiles * 4 * w
    return code[:n, :m].to(torch.uint8)


def upgrade(packed: torch.Tensor, bits: int, n: int, m: int, version: int) -> torch.Tensor:
    """Codes packed in an older layout -> layout v5 (qcomp.load converts old artifacts instead of refusing them).
    v3: int32 [N, Mpad*bits/32], the row-major words of _group_rows, no pad rows (v3 -> v4 is a permutation of the
    words); v4: as v5 but 3-bit codes in a 2-bit and a 1-bit plane (v4 -> v5 re-packs those)."""
    if version not in READABLE_VERSIONS:
        raise ValueError(f"packing version {version} is not one of {READABLE_VERSIONS}")
    planes(bits)  # validates bits
    mp = padded_codes(m)
    if version == 3:
        if tuple(packed.shape) != (n, mp * bits // 32) or packed.dtype != torch.int32:
            raise ValueError(f"a v3 packed tensor of {n} rows x {m} codes of {bits} bits is int32 "
                             f"{(n, mp * bits // 32)}, got {packed.dtype} {tuple(packed.shape)}")
        rows = torch.nn.functional.pad(packed, (0, 0, 0, padded_rows(n) - n))  # zero pad rows
        packed, version = _group_rows(rows, planes(bits, 4), mp), 4
    if planes(bits, version) == planes(bits):
        return packed
    return pack_codes(unpack_codes(packed, bits, n, m, version), bits)


def row_group_runs(packed: torch.Tensor, tile_words: int, reader: str) -> torch.Tensor:
    """The packed words of a one-plane layout (v5, int32 [Npad, row_words], tiles of `tile_words` words per row) seen
    as [row groups, tiles * ROW_GROUP, tile_words]: row q * 16 + r of group G is the run of row r in pack tile q, so
    a [groups, 16, tile_words] box of it is a K step's words of a run of row groups (the TMA descriptors' view).
    ValueError naming `reader` where the tensor is not laid out so (sliced, strided, misaligned)."""
    rows, row_words = packed.shape
    if not packed.is_contiguous() or rows % ROW_GROUP or row_words % tile_words or packed.data_ptr() % 16:
        raise ValueError(f"{reader} reads the packed words through TMA: it needs them contiguous, 16-byte aligned, in "
                         f"row groups of {ROW_GROUP} and tiles of {tile_words} words per row (layout v5, as pack_codes "
                         f"returns them), got shape {tuple(packed.shape)} strides {packed.stride()} at address "
                         f"{packed.data_ptr():#x}")
    return packed.view(rows // ROW_GROUP, ROW_GROUP * row_words // tile_words, tile_words)
