"""Packed layout v4 (codegen/packing.py): hypothesis round trips, the documented bit positions, v3 conversion."""
import torch
from hypothesis import given, settings, strategies as st

from qcomp.codegen.packing import (PACK_TILE, ROW_GROUP, pack_codes, packed_shape, padded_codes, planes, repack_v3,
                                   unpack_codes)


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


def pack_v3(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Layout v3 (PACKING_VERSION 3: each row its planes' tiles in order, no row groups), for conversion tests."""
    n, m = codes.shape
    mp, tiles = padded_codes(m), padded_codes(m) // PACK_TILE
    c = torch.zeros(n, mp, dtype=torch.int64)
    c[:, :m] = codes.to(torch.int64)
    parts = []
    for w, off in planes(bits):
        slots, nw = 32 // w, 4 * w
        v = ((c >> off) & ((1 << w) - 1)).reshape(n, tiles, slots, nw)
        word = (v << (torch.arange(slots, dtype=torch.int64) * w).reshape(1, 1, slots, 1)).sum(2).reshape(n, -1)
        parts.append(torch.where(word >= 2**31, word - 2**32, word).to(torch.int32))
    return torch.cat(parts, dim=1)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(1, 40), m=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_repack_v3_gives_the_v4_layout(bits, n, m, seed):
    codes = torch.randint(0, 2**bits, (n, m), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(repack_v3(pack_v3(codes, bits), bits, n, m), pack_codes(codes, bits))


def test_repack_v3_rejects_a_wrong_shape():
    import pytest

    with pytest.raises(ValueError, match="v3 packed tensor"):
        repack_v3(torch.zeros(3, 5, dtype=torch.int32), 4, 3, 128)
