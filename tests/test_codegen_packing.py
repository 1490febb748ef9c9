"""Packed layout v3 (codegen/packing.py): hypothesis round trips and the documented bit positions."""
import torch
from hypothesis import given, settings, strategies as st

from qcomp.codegen.packing import PACK_TILE, ROW_GROUP, pack_codes, packed_shape, planes, unpack_codes


@settings(max_examples=120, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(1, 5), m=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
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
    # code 5 = 0b101 at t = 33 of row 3: low 2 bits (0b01) in the 2-bit plane (W = 8 words per tile): word
    # 33 % 8 = 1, slot 33 // 8 = 4, shift 8; with row groups of 16 (v4) the plane's tile 0 holds row r at words
    # r*8 .. r*8 + 7: flat word 3*8 + 1 = 25. Bit 2 (1) in the 1-bit plane (W = 4), which starts at flat word
    # 16 * plane_words * bit_offset = 16 * 4 * 2 = 128: word 128 + 3*4 + 33 % 4 = 141, slot 33 // 4 = 8, shift 8.
    codes = torch.zeros(4, PACK_TILE, dtype=torch.uint8)
    codes[3, 33] = 5
    p = pack_codes(codes, 3)
    assert p.shape == (ROW_GROUP, 12)  # rows padded to a whole group
    expect = torch.zeros(ROW_GROUP * 12, dtype=torch.int32)
    expect[25] = 1 << 8
    expect[141] = 1 << 8
    assert torch.equal(p.reshape(-1), expect)


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
