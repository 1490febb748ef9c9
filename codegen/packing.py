"""Packed storage of b-bit codes (b in 1..8).

Layout (version 1, a plain bit stream): the codes of one row [M] are written little-endian into a bit
stream, code j occupying bits [j*b, (j+1)*b); the stream is cut into bytes. packed: uint8 [N, ceil(M*b/8)].
"""
from __future__ import annotations

import torch

PACKING_VERSION = 1


def packed_shape(n: int, m: int, bits: int) -> tuple[int, int]:
    return (n, (m * bits + 7) // 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise ValueError(f"pack_codes expects uint8 codes [N, M], got {codes.dtype} {tuple(codes.shape)}")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    n, m = codes.shape
    if m and int(codes.max()) >= 2**bits:
        raise ValueError(f"a code exceeds {bits} bits (max {int(codes.max())})")
    shifts = torch.arange(bits, dtype=torch.uint8)
    stream = ((codes[:, :, None] >> shifts) & 1).reshape(n, m * bits)
    pad = (-stream.shape[1]) % 8
    stream = torch.nn.functional.pad(stream, (0, pad)).reshape(n, -1, 8)
    weights = (2 ** torch.arange(8, dtype=torch.int32)).to(torch.uint8)
    return (stream * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, n: int, m: int) -> torch.Tensor:
    if packed.shape != packed_shape(n, m, bits):
        raise ValueError(f"packed shape {tuple(packed.shape)} does not match {packed_shape(n, m, bits)} for {m} codes of {bits} bits")
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed[:, :, None] >> shifts) & 1).reshape(n, -1)[:, : m * bits].reshape(n, m, bits)
    weights = (2 ** torch.arange(bits, dtype=torch.int32, device=packed.device))
    return (stream.to(torch.int32) * weights).sum(-1).to(torch.uint8)
