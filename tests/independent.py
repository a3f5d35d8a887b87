"""An independent float64 model of the formats and layouts, written from the specs with
plain Python loops (no fp4core code), so the library is checked against something else."""

import math

E2M1_MAG = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def e2m1_value(code: int) -> float:
    sign = -1.0 if code & 8 else 1.0
    e, m = (code >> 1) & 3, code & 1
    mag = m * 0.5 if e == 0 else 2.0 ** (e - 1) * (1 + m / 2)
    return sign * mag


def e2m1_round(x: float) -> int:
    """Nearest E2M1 code; ties to the even code; saturate at 6."""
    mag = min(abs(x), 6.0)
    best = min(range(8), key=lambda c: (abs(E2M1_MAG[c] - mag), c & 1))
    return best | (8 if math.copysign(1.0, x) < 0 else 0)


def e4m3_value(b: int) -> float:
    sign = -1.0 if b & 0x80 else 1.0
    e, m = (b >> 3) & 15, b & 7
    if e == 15 and m == 7:
        return math.nan
    if e == 0:
        return sign * m / 8 * 2.0 ** -6
    return sign * (1 + m / 8) * 2.0 ** (e - 7)


_E4M3_POS = [(e4m3_value(b), b) for b in range(0x7F)]


def e4m3_round(x: float) -> int:
    """Nearest non-negative E4M3 byte, ties to even mantissa, saturating at 448."""
    x = min(x, 448.0)
    return min(_E4M3_POS, key=lambda vb: (abs(vb[0] - x), vb[1] & 1))[1]


def e8m0_value(b: int) -> float:
    return math.nan if b == 255 else 2.0 ** (b - 127)


def offset_128x4(r: int, c: int, padded_cols: int) -> int:
    tile = (r // 128) * (padded_cols // 4) + c // 4
    return tile * 512 + (r % 32) * 16 + ((r // 32) % 4) * 4 + (c % 4)


def offset_8x4(r: int, c: int, padded_cols: int) -> int:
    tile = (r // 8) * (padded_cols // 4) + c // 4
    return tile * 32 + (r % 8) * 4 + (c % 4)


def round_up(x, m):
    return (x + m - 1) // m * m


def swizzle(sf_rows, layout):
    """sf_rows: list of lists of bytes -> flat list in the layout's order (zero padded)."""
    rows, cols = len(sf_rows), len(sf_rows[0])
    tile_h = 128 if layout == "128x4" else 8
    prow, pcol = round_up(rows, tile_h), round_up(cols, 4)
    flat = [0] * (prow * pcol)
    off = offset_128x4 if layout == "128x4" else offset_8x4
    for r in range(rows):
        for c in range(cols):
            flat[off(r, c, pcol)] = sf_rows[r][c]
    return flat


def unswizzle(flat, rows, cols, layout):
    pcol = round_up(cols, 4)
    off = offset_128x4 if layout == "128x4" else offset_8x4
    return [[flat[off(r, c, pcol)] for c in range(cols)] for r in range(rows)]


def dequant_matrix(packed_rows, sf_rows, block, scale_value):
    """packed bytes (rows x K/2) + linear scale bytes -> float64 rows x K."""
    out = []
    for prow, srow in zip(packed_rows, sf_rows):
        vals = []
        for j, byte in enumerate(prow):
            for code in (byte & 15, byte >> 4):
                k = len(vals)
                vals.append(e2m1_value(code) * scale_value(srow[k // block]))
        out.append(vals)
    return out


def matmul_t(a, b):
    return [[math.fsum(x * y for x, y in zip(ra, rb)) for rb in b] for ra in a]
