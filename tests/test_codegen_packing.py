"""Packed layout v5 (codegen/packing.py): hypothesis round trips, the documented bit positions, v3/v4 conversion."""
import torch
from hypothesis import given, settings, strategies as st

from qcomp.codegen.packing import (PACK_TILE, ROW_GROUP, _group_rows, pack_codes, packed_shape, padded_codes, planes,
                                   trio_bit, trio_word, unpack_codes, upgrade)


@settings(max_examples=120, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(1, 40), m=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_round_trip(bits, n, m, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n, m), dtype=torch.uint8, generator=g)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.int32
    assert tuple(packed.shape) == packed_shape(n, m, bits)
    assert torch.equal(unpack_codes(packed, bits, n, m), codes)


@given(bits=st.integers(1, 8))
def test_planes_cover_every_bit_once(bits):
    pl = planes(bits)
    assert sum(w for w, _ in pl) == bits
    assert [o for _, o in pl] == [sum(w for w, _ in pl[:i]) for i in range(len(pl))]
    assert [w for w, _ in pl] == sorted((w for w, _ in pl), reverse=True)


def test_documented_positions_3_bits():
    # trio plane (12 words per tile: 3 words x 4 columns). Code 5 = 0b101 at t = 33 of row 3: column 33 % 4 = 1,
    # slot 33 // 4 = 8 (low half, r = 8) -> word e = 8 // 5 = 1 of the column, bit 3 * (8 % 5) = 9; the group's tile
    # holds word e of column i of row r at flat word e * 64 + i * 16 + r: 64 + 16 + 3 = 83. Code 6 = 0b110 at t = 126
    # of row 3: column 2, slot 31 (the spare bits 31 of the column's three words, code bit e in word e): bit 1 ->
    # flat word 64 + 32 + 3 = 99, bit 2 -> flat word 128 + 32 + 3 = 163.
    codes = torch.zeros(4, PACK_TILE, dtype=torch.uint8)
    codes[3, 33] = 5
    codes[3, 126] = 6
    p = pack_codes(codes, 3)
    assert p.shape == (ROW_GROUP, 12)  # rows padded to a whole group
    expect = torch.zeros(ROW_GROUP * 12, dtype=torch.int64)
    expect[83] = 5 << 9
    expect[99] = expect[163] = -(2**31)  # bit 31 of an int32
    assert torch.equal(p.reshape(-1).to(torch.int64), expect)
    assert [trio_bit(g) for g in (0, 4, 5, 14, 15, 16, 30, 31)] == [0, 12, 0, 12, 15, 16, 28, 31]


def test_trio_slots_fill_each_word_exactly():
    # slots g and g + 16 share a word's halves; ten 3-bit fields per word, no overlap, bits 15 and 31 spare (slots
    # 15 and 31: one code bit in each word)
    for word in range(3):
        used = 0
        for g in range(32):
            if trio_word(g) == word:
                assert trio_word(g + 16 if g < 16 else g - 16) == word and trio_bit(g) % 16 == trio_bit(g ^ 16) % 16
                field = 7 << trio_bit(g)
                assert used & field == 0
                used |= field
        assert used | (1 << 15) | (1 << 31) == 2**32 - 1
    assert trio_word(15) is None and trio_word(31) is None and (trio_bit(15), trio_bit(31)) == (15, 31)


def test_each_plane_tile_is_whole_16_byte_vectors():
    for bits in range(1, 9):
        for w, _ in planes(bits):
            assert PACK_TILE * w % 128 == 0  # 128 bits = 16 bytes


def test_second_tile_and_8_bits():
    # 8 bits: W = 32 words per tile, 4 slots; code t = 128 + 70 (tile 1) of row 5: tile 1 of the group starts at
    # flat word 16 * 32 = 512, row 5 at 512 + 5 * 32, word 70 % 32 = 6: flat 678, slot 2.
    codes = torch.zeros(6, 2 * PACK_TILE, dtype=torch.uint8)
    codes[5, 128 + 70] = 0xA5
    p = pack_codes(codes, 8)
    flat = p.reshape(-1)
    assert p.shape == (ROW_GROUP, 64) and int(flat[678]) == 0xA5 << 16 and int(p.count_nonzero()) == 1


def test_rejects_wide_codes():
    import pytest

    with pytest.raises(ValueError, match="exceeds 3 bits"):
        pack_codes(torch.full((1, 4), 8, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="does not match"):
        unpack_codes(torch.zeros(1, 3, dtype=torch.int32), 3, 1, 128)


def pack_v3(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Layout v3 (PACKING_VERSION 3: each row its planes' tiles in order, no row groups), for conversion tests."""
    n, m = codes.shape
    mp, tiles = padded_codes(m), padded_codes(m) // PACK_TILE
    c = torch.zeros(n, mp, dtype=torch.int64)
    c[:, :m] = codes.to(torch.int64)
    parts = []
    for w, off in planes(bits, 4):  # binary planes (3 bits: 2 + 1 before v5)
        slots, nw = 32 // w, 4 * w
        v = ((c >> off) & ((1 << w) - 1)).reshape(n, tiles, slots, nw)
        word = (v << (torch.arange(slots, dtype=torch.int64) * w).reshape(1, 1, slots, 1)).sum(2).reshape(n, -1)
        parts.append(torch.where(word >= 2**31, word - 2**32, word).to(torch.int32))
    return torch.cat(parts, dim=1)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(1, 40), m=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_upgrade_gives_the_current_layout(bits, n, m, seed):
    codes = torch.randint(0, 2**bits, (n, m), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    v3 = pack_v3(codes, bits)
    rows = torch.nn.functional.pad(v3, (0, 0, 0, -(-n // ROW_GROUP) * ROW_GROUP - n))
    v4 = _group_rows(rows, planes(bits, 4), padded_codes(m))
    assert torch.equal(unpack_codes(v4, bits, n, m, version=4), codes)
    for version, old in ((3, v3), (4, v4), (5, pack_codes(codes, bits))):
        assert torch.equal(upgrade(old, bits, n, m, version), pack_codes(codes, bits))
    if bits != 3:  # only 3 bits changed in v5
        assert torch.equal(v4, pack_codes(codes, bits))


def test_upgrade_rejects_a_wrong_shape_or_version():
    import pytest

    with pytest.raises(ValueError, match="v3 packed tensor"):
        upgrade(torch.zeros(3, 5, dtype=torch.int32), 4, 3, 128, 3)
    with pytest.raises(ValueError, match="packing version 2"):
        upgrade(torch.zeros(16, 16, dtype=torch.int32), 4, 3, 128, 2)


@given(bits=st.integers(1, 8), tiles=st.sampled_from([1, 2, 4, 8]))
def test_kernel_columns_cover_each_tile_once(bits, tiles):
    """KernelSpec's view of the layout: tile_cols columns of col_slots codes make one 128-code tile, and the words a
    K step loads per row are the packed row's words for those tiles."""
    from qcomp.codegen.kernel_spec import KernelSpec

    s = KernelSpec(bits=bits, block_k=128 * tiles)
    assert s.tile_cols * s.col_slots == PACK_TILE
    assert s.cols_per_step == tiles * s.tile_cols
    words = (3 if s.widest_plane == 3 else 1) * s.cols_per_step  # trio: three words per column
    assert words == tiles * PACK_TILE * s.widest_plane // 32
    assert s.widest_plane == planes(bits)[0][0]
