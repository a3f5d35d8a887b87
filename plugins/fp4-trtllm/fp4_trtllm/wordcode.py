"""The NVFP4 weight word codes: lossless re-encodings of every 32-bit word of the prepared weight
so that the kernel turns 8 E2M1 codes into MMA operand bit patterns with 4-5 shifts and 4 LOP3s
(``decode_nv_weight`` / ``decode_nv_weight_bf16`` in ``csrc/fp4_decode.cuh``) instead of ~17
byte-permute/logic instructions (fp16) or ~25 (bf16 through a table or a conversion).

A word holds 8 codes of one weight row, code i (k order) in bits 4i..4i+3 (sign in bit 3). The
kernel wants 4 registers r_q, each two 16-bit float bit patterns: code 2q in the low half, 2q+1
in the high half, the sign in bit 15 and the three magnitude bits (e1 e0 m) at the bottom of the
exponent field and the top of the mantissa. Each half is then the code's value times a power of
two exactly (e = 0 lands in the float's subnormals, which is E2M1's own subnormal):

* ``F16`` (W4A4, FP4 activations): magnitude in bits 11..9, value * 2^-14 in fp16;
* ``BF16`` (weight-only calls): magnitude in bits 8..6, value * 2^-126 in bf16 (with fp16
  activations the kernel moves the bits up by 3 into the F16 placement).

Moving those bits into place is not a shift of the natural word (the sign sits 4 or 7 bits above
the magnitude in the float, 1 bit above it in E2M1), so the kernel computes instead, per register
q with its own shift pair (a_q, b_q)::

    r_q = ((w << a_q) ^ (w >> b_q)) & Q

a linear map D over GF(2) that is invertible. ``prepare`` stores E(w) = D^-1(target bits of w),
so that D(E(w)) is exactly the wanted registers; ``decode`` applies E^-1. Both are 32x32 bit
matrices applied as four 256-entry byte tables. F16's shifts {0, 2, 6, 9 | 3} are the fewest
with one XOR per register; BF16 needs two right shifts ({0, 2, 5, 6 | 8, 5}): a search over every
set with one common right shift found no invertible D (``tests/test_kernel_emulation.py`` checks
each code against the kernel's decode for every code in every position).

MXFP4 weights keep the natural word: their bf16 decode needs E8M0's exponent range, which these
placements do not have.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

_MASK = 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class WordCode:
    """One placement of the decoded bits and the kernel's shifts for it.

    Attributes:
        name: "f16" or "bf16" (also the name ``prepare`` records in the layout's metadata).
        q: the bits each register keeps (sign and the three magnitude bits of both halves).
        shifts: per register q, (left shift a_q, right shift b_q) of the stored word.
        mag_lsb: the bit of a half where the magnitude's lowest bit (m) lands.
        value_scale: code value = decoded half * value_scale.
    """
    name: str
    q: int
    shifts: tuple[tuple[int, int], ...]
    mag_lsb: int
    value_scale: float


F16 = WordCode("f16", 0x8E008E00, ((0, 3), (2, 3), (6, 3), (9, 3)), 9, 2.0 ** 14)
BF16 = WordCode("bf16", 0x81C081C0, ((0, 8), (2, 8), (5, 5), (6, 8)), 6, 2.0 ** 126)
CODES = {c.name: c for c in (F16, BF16)}


def code_named(name: str) -> WordCode:
    """The code called ``name`` ("f16" or "bf16"); ValueError naming the choices otherwise."""
    try:
        return CODES[name]
    except KeyError:
        raise ValueError(f"word code: expected one of {sorted(CODES)}, got {name!r}") from None


def decode_word(w: int, code: WordCode = F16) -> list[int]:
    """The kernel's decode of one stored word (python ints): the 4 registers, 2 halves each."""
    return [(((w << a) & _MASK) ^ (w >> b)) & code.q for a, b in code.shifts]


def target_registers(natural: int, code: WordCode = F16) -> list[int]:
    """What the kernel must see for a natural word of 8 codes: 4 registers of 16-bit float bit
    patterns (code value / code.value_scale), code 2q in the low half of register q."""
    regs = []
    for q in range(4):
        r = 0
        for h in range(2):
            c = (natural >> (4 * (2 * q + h))) & 0xF
            r |= (((c & 8) << 12) | ((c & 7) << code.mag_lsb)) << (16 * h)
        regs.append(r)
    return regs


def _q_bits(regs: list[int], q: int) -> int:
    """Pack the 8 bits at ``q`` of each of 4 registers into one 32-bit vector (register i at 8i)."""
    out, qpos = 0, [p for p in range(32) if q >> p & 1]
    for i, r in enumerate(regs):
        for j, p in enumerate(qpos):
            out |= ((r >> p) & 1) << (8 * i + j)
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
def _tables(code: WordCode) -> tuple[list[list[int]], list[list[int]]]:
    """Byte tables of E and of E^-1: word = XOR over byte positions p of table[p][byte p]."""
    d_cols = [_q_bits(decode_word(1 << i, code), code.q) for i in range(32)]  # D's columns
    enc_bit = [_solve(d_cols, _q_bits(target_registers(1 << i, code), code.q)) for i in range(32)]
    # E^-1 maps a stored word back: natural bit i is read off the decoded target bits.
    t_cols = [_q_bits(target_registers(1 << i, code), code.q) for i in range(32)]
    dec_bit = [_solve(t_cols, _q_bits(decode_word(1 << i, code), code.q)) for i in range(32)]

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


def encode(data: torch.Tensor, code: WordCode = F16) -> torch.Tensor:
    """Natural packed E2M1 bytes -> stored bytes (uint8, any shape with a multiple of 4 bytes;
    little-endian 32-bit words, each re-encoded on its own)."""
    return _apply(data, _tables(code)[0])


def decode(data: torch.Tensor, code: WordCode = F16) -> torch.Tensor:
    """Exact inverse of ``encode`` with the same ``code``."""
    return _apply(data, _tables(code)[1])
