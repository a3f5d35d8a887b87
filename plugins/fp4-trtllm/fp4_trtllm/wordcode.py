"""The NVFP4 weight word code: a lossless re-encoding of every 32-bit word of the prepared weight
so that the kernel decodes 8 E2M1 codes with 4 shifts and 4 LOP3s (``decode_nv_weight`` in
``csrc/fp4_decode.cuh``) instead of ~17 byte-permute/logic instructions.

A word holds 8 codes of one weight row, code i (k order) in bits 4i..4i+3 (sign in bit 3). The
kernel wants 4 registers r_q, each two fp16 bit patterns: code 2q in the low half, 2q+1 in the
high half, sign in bit 15 and the three magnitude bits (e1 e0 m) in bits 11..9 of the half. That
places the E2M1 exponent in the low two bits of the fp16 exponent, so each half is the code's
value times 2^-14 exactly (e = 0 lands in fp16's subnormals, which is E2M1's own subnormal); the
kernel folds 2^14 into alpha.

Moving those bits into place is not a shift of the natural word (the sign sits 4 bits above the
magnitude in fp16, 1 bit above it in E2M1), so the kernel computes instead, with x = w >> 3::

    r0 = (w ^ x) & Q    r1 = ((w << 2) ^ x) & Q    r2 = ((w << 6) ^ x) & Q    r3 = ((w << 9) ^ x) & Q

(Q = 0x8E008E00), a linear map D over GF(2) that is invertible. ``prepare`` stores E(w) =
D^-1(target bits of w), so that D(E(w)) is exactly the wanted registers; ``unprepare`` applies
E^-1. Both are 32x32 bit matrices applied as four 256-entry byte tables. The shift set
{0, 2, 6, 9, -3} is the smallest that makes D invertible with one XOR per register (a search
over all left/right shift sets of up to three shifts found none).

MXFP4 weights keep the natural word: their bf16 decode needs E8M0's exponent range, which the
fp16 bit placement does not have.
"""

from __future__ import annotations

import functools

import torch

Q = 0x8E008E00
#: (left shift a, right shift b) per register: r_q = ((w << a) ^ (w >> b)) & Q
DECODE_SHIFTS = ((0, 3), (2, 3), (6, 3), (9, 3))
#: The factor between a decoded register half and the code's value: value = half * 2^14.
VALUE_SCALE = 2.0 ** 14
_MASK = 0xFFFFFFFF


def decode_word(w: int) -> list[int]:
    """The kernel's decode of one stored word (python ints): the 4 registers, 2 fp16 halves each."""
    return [(((w << a) & _MASK) ^ (w >> b)) & Q for a, b in DECODE_SHIFTS]


def target_registers(natural: int) -> list[int]:
    """What the kernel must see for a natural word of 8 codes: 4 registers of fp16 bit
    patterns (code value * 2^-14), code 2q in the low half of register q."""
    regs = []
    for q in range(4):
        r = 0
        for h in range(2):
            code = (natural >> (4 * (2 * q + h))) & 0xF
            r |= (((code & 8) << 12) | ((code & 7) << 9)) << (16 * h)
        regs.append(r)
    return regs


def _q_bits(regs: list[int]) -> int:
    """Pack the 8 bits at Q of each of 4 registers into one 32-bit vector (register q at 8q)."""
    out, qpos = 0, [p for p in range(32) if Q >> p & 1]
    for q, r in enumerate(regs):
        for i, p in enumerate(qpos):
            out |= ((r >> p) & 1) << (8 * q + i)
    return out


def _solve(cols: list[int], y: int) -> int:
    """x with sum_i x_i cols[i] = y over GF(2) (cols: 32 linearly independent 32-bit vectors)."""
    # Gaussian elimination on rows of the augmented matrix [A | y], A = columns as given.
    rows = []
    for bit in range(32):
        row = 0
        for i, c in enumerate(cols):
            row |= ((c >> bit) & 1) << i
        rows.append((row, (y >> bit) & 1))
    x, pivots = 0, []
    for col in range(32):
        piv = next(i for i in range(len(pivots), 32) if rows[i][0] >> col & 1)
        rows[len(pivots)], rows[piv] = rows[piv], rows[len(pivots)]
        pr, py = rows[len(pivots)]
        for i in range(32):
            if i != len(pivots) and rows[i][0] >> col & 1:
                rows[i] = (rows[i][0] ^ pr, rows[i][1] ^ py)
        pivots.append(col)
    for i, col in enumerate(pivots):
        x |= rows[i][1] << col
    return x


@functools.lru_cache(maxsize=None)
def _tables() -> tuple[list[list[int]], list[list[int]]]:
    """Byte tables of E and of E^-1: word = XOR over byte positions p of table[p][byte p]."""
    d_cols = [_q_bits(decode_word(1 << i)) for i in range(32)]  # D's columns
    enc_bit = [_solve(d_cols, _q_bits(target_registers(1 << i))) for i in range(32)]
    # E^-1 maps a stored word back: natural bit i is read off the decoded target bits.
    t_cols = [_q_bits(target_registers(1 << i)) for i in range(32)]
    dec_bit = [_solve(t_cols, _q_bits(decode_word(1 << i))) for i in range(32)]

    def byte_tables(bit_images: list[int]) -> list[list[int]]:
        tabs = []
        for p in range(4):
            tab = []
            for v in range(256):
                img = 0
                for b in range(8):
                    if v >> b & 1:
                        img ^= bit_images[8 * p + b]
                tab.append(img)
            tabs.append(tab)
        return tabs

    return byte_tables(enc_bit), byte_tables(dec_bit)


def _apply(data: torch.Tensor, tables: list[list[int]]) -> torch.Tensor:
    if data.numel() % 4:
        raise ValueError(f"the word code works on whole 32-bit words, got {data.numel()} bytes")
    by = data.reshape(-1, 4).to(torch.int64)
    word = torch.zeros(by.shape[0], dtype=torch.int64, device=data.device)
    for p in range(4):
        tab = torch.tensor(tables[p], dtype=torch.int64, device=data.device)
        word ^= tab[by[:, p]]
    shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int64, device=data.device)
    return ((word.unsqueeze(1) >> shifts) & 0xFF).to(torch.uint8).reshape(data.shape)


def encode(data: torch.Tensor) -> torch.Tensor:
    """Natural packed E2M1 bytes -> stored bytes (uint8, any shape with a multiple of 4 bytes;
    little-endian 32-bit words, each re-encoded on its own)."""
    return _apply(data, _tables()[0])


def decode(data: torch.Tensor) -> torch.Tensor:
    """Exact inverse of ``encode``."""
    return _apply(data, _tables()[1])
