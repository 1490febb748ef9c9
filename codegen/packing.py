"""Packed storage of b-bit codes (b in 1..8) for the generated kernels (layout version 2, see PACKING.md).

A code of `bits` bits is split into power-of-two *planes*, widest first, low bits in the widest plane
(7 = 4+2+1: bits 0..3 in the 4-bit plane, bits 4..5 in the 2-bit plane, bit 6 in the 1-bit plane).
Each plane of width w packs 32/w consecutive codes into one int32 word, code j of a row at word
j // (32/w), bit offset (j % (32/w)) * w (LSB first). The codes of a row are padded with zeros to a
multiple of PACK_TILE = 128 codes, so every plane's segment of one 128-code tile is 16*w bytes: whole
16-byte vectors. packed: int32 [N, Mpad * bits / 32], row n = [plane 0 words | plane 1 words | ...],
plane i starting at column Mpad * (sum of the widths before it) / 32.
"""
from __future__ import annotations

import torch

PACKING_VERSION = 2
PACK_TILE = 128  # codes; a multiple of 32 so that every plane row is whole int32 words


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


def packed_shape(n: int, m: int, bits: int) -> tuple[int, int]:
    planes(bits)  # validates bits
    return (n, padded_codes(m) * bits // 32)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [N, M] (each < 2**bits) -> int32 packed [N, Mpad*bits/32]."""
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise ValueError(f"pack_codes expects uint8 codes [N, M], got {codes.dtype} {tuple(codes.shape)}")
    pl = planes(bits)
    n, m = codes.shape
    if m and int(codes.max()) >= 2**bits:
        raise ValueError(f"a code exceeds {bits} bits (max {int(codes.max())}); pass the code width bits*p")
    mp = padded_codes(m)
    c = torch.zeros(n, mp, dtype=torch.int64, device=codes.device)
    c[:, :m] = codes.to(torch.int64)
    parts = []
    for w, off in pl:
        per = 32 // w
        v = ((c >> off) & ((1 << w) - 1)).reshape(n, mp // per, per)
        shifts = torch.arange(per, dtype=torch.int64, device=codes.device) * w
        word = (v << shifts).sum(-1)  # < 2**32, exact in int64
        parts.append(torch.where(word >= 2**31, word - 2**32, word).to(torch.int32))
    return torch.cat(parts, dim=1).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, n: int, m: int) -> torch.Tensor:
    """int32 packed [N, Mpad*bits/32] -> uint8 codes [N, M]."""
    if tuple(packed.shape) != packed_shape(n, m, bits):
        raise ValueError(
            f"packed shape {tuple(packed.shape)} does not match {packed_shape(n, m, bits)} for {m} codes of {bits} bits"
        )
    if packed.dtype != torch.int32:
        raise ValueError(f"packed must be int32 (layout version {PACKING_VERSION}), got {packed.dtype}")
    mp = padded_codes(m)
    p64 = packed.to(torch.int64) & 0xFFFFFFFF
    code = torch.zeros(n, mp, dtype=torch.int64, device=packed.device)
    col = 0
    for w, off in planes(bits):
        per = 32 // w
        nw = mp // per
        words = p64[:, col : col + nw]
        shifts = torch.arange(per, dtype=torch.int64, device=packed.device) * w
        v = (words[:, :, None] >> shifts) & ((1 << w) - 1)
        code |= v.reshape(n, mp) << off
        col += nw
    return code[:, :m].to(torch.uint8)
