"""Triton kernels of the SM80-SM90 dequantization (see ``dequant.py``, which imports this
module lazily: importing it needs Triton)."""

import triton
import triton.language as tl


@triton.jit
def _e2m1_pair_f32(q):
    # q: int32 0..255, one packed byte (low nibble = first value). Returns both values as
    # float32, exact. Each 3-bit (exponent, mantissa) field goes under the fp32 exponent's
    # two low bits and the mantissa's top bit, the sign bit to bit 31; read as a float that is
    # the value * 2^-126 (magnitude 1, the E2M1 subnormal 0.5, lands on the fp32 subnormal
    # 2^-127), so one exact multiply by 2^126 finishes it. No compares or selects: those, per
    # value, had made the integer pipe the kernel's limit (benchmarks/sass_pipes.py counts).
    lo = ((q << 22) | (q << 28)) & -2118123520           # 0x81C00000
    t = q & 0xF0
    hi = ((t << 18) | (t << 24)) & -2118123520
    lo_f = lo.to(tl.float32, bitcast=True) * 8.507059173023462e37   # 2^126
    hi_f = hi.to(tl.float32, bitcast=True) * 8.507059173023462e37
    return lo_f, hi_f


@triton.jit
def _scale_f32(s, NVFP4: tl.constexpr):
    # s: int32 0..255, one scale byte.
    if NVFP4:
        # E4M3 (fn): exponent and mantissa go under the fp32 exponent's low 4 bits and the
        # mantissa's top 3 (value * 2^-120, E4M3 subnormals landing on fp32 subnormals), the
        # sign to bit 31, then one exact multiply by 2^120. 0x7F / 0xFF are NaN.
        bits = ((s & 0x7F) << 20) | ((s & 0x80) << 24)
        val = bits.to(tl.float32, bitcast=True) * 1.329227995784916e36   # 2^120
        val = tl.where((s & 0x7F) == 0x7F, (s * 0 + 0x7FC00000).to(tl.float32, bitcast=True), val)
    else:
        # E8M0: 2^(s-127); s == 0 is the fp32 subnormal 2^-127; 0xFF is NaN.
        bits = tl.where(s == 0, 0x00400000, s << 23)
        val = bits.to(tl.float32, bitcast=True)
        val = tl.where(s == 255, (s * 0 + 0x7FC00000).to(tl.float32, bitcast=True), val)
    return val


@triton.jit
def _tile(q_ptr, sf_ptr, out_ptr, rows, kbytes, sf_col_tiles, tile, alpha_ptr,
          BR: tl.constexpr, NV: tl.constexpr, VB: tl.constexpr, NVFP4: tl.constexpr,
          SF_TILE_ROWS: tl.constexpr, ALPHA: tl.constexpr, EVEN: tl.constexpr, BPB: tl.constexpr):
    # A tile is NV vectors of VB packed bytes x BR rows, indexed [vector, row, byte]; each
    # thread owns vectors and writes one int32 (two bf16) per packed byte. With VB = 4 the
    # load (4 bytes) and the store (4 int32 = 16 bytes) give Triton the same per-thread
    # layout, so no shared-memory shuffle sits between them; VB = one scale block (8 NVFP4 /
    # 16 MXFP4 bytes) reads each scale once per thread instead, at the price of that shuffle.
    # Putting the vector axis first makes Triton spread a warp's threads along it (it breaks
    # ties between non-contiguous axes by position), so a warp's stores cover consecutive
    # bytes. Tiles walk along K first: neighbouring programs touch neighbouring bytes. EVEN
    # (every tile full) drops the bounds masks, whose compares and selects per element cost
    # more integer work than the decode.
    k_tiles = tl.cdiv(kbytes, NV * VB)
    row0 = (tile // k_tiles) * BR
    v = (tile % k_tiles) * NV + tl.arange(0, NV)
    r = row0 + tl.arange(0, BR)
    r3 = r[None, :, None].to(tl.int64)
    kbyte = v[:, None, None] * VB + tl.arange(0, VB)[None, None, :]
    if EVEN:
        q = tl.load(q_ptr + r3 * kbytes + kbyte).to(tl.int32)
    else:
        mask = (r[None, :, None] < rows) & (kbyte < kbytes)
        q = tl.load(q_ptr + r3 * kbytes + kbyte, mask=mask, other=0).to(tl.int32)

    # The scale byte of (row r, block c) of every vector, read in place from the swizzled
    # layout (fp4core.formats.layouts.scale_offsets is the same formula on the host). Vectors of one
    # block read the same byte (an L1 hit).
    r2 = r[None, :]
    c2 = ((v * VB) // BPB)[:, None]
    # Shifts and masks, not // and %: the indices are non-negative, and signed division
    # costs rounding fix-ups.
    if SF_TILE_ROWS == 128:
        soff = (((r2 >> 7) * sf_col_tiles + (c2 >> 2)) << 9) + ((r2 & 31) << 4) + (((r2 >> 5) & 3) << 2) + (c2 & 3)
    else:
        soff = (((r2 >> 3) * sf_col_tiles + (c2 >> 2)) << 5) + ((r2 & 7) << 2) + (c2 & 3)
    if EVEN:
        s = tl.load(sf_ptr + soff).to(tl.int32)
    else:
        # the vector's first byte in range (vectors are VB-aligned and K/2 a multiple of a
        # scale block's bytes, so then its block is too); a block index past the last one
        # would read past the scale storage of the last row tile
        smask = (r2 < rows) & ((v * VB)[:, None] < kbytes)
        s = tl.load(sf_ptr + soff, mask=smask, other=0).to(tl.int32)
    scale = _scale_f32(s, NVFP4)[:, :, None]

    lo, hi = _e2m1_pair_f32(q)
    lo = lo * scale            # exact in fp32
    hi = hi * scale
    if ALPHA:
        # Fold the GEMM's alpha into this operand: (code * scale) * alpha, rounded once in
        # fp32 and once to bf16 -- the "plain" graph's only deviation from exact dequantization.
        # fp32 -> bf16 is cvt.rn (nearest even), as torch rounds; Triton's CPU interpreter
        # truncates instead, so only these values differ there.
        alpha = tl.load(alpha_ptr)
        lo16 = (lo * alpha).to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        hi16 = (hi * alpha).to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32)
        pair = ((hi16 << 16) | lo16).to(tl.uint32, bitcast=True)
    else:
        # Every code * scale has at most 5 significant bits and is 0 or at least 2^-128 in
        # magnitude, so it is a bf16: its top 16 bits are that bf16 (inf and NaN included).
        pair = (hi.to(tl.uint32, bitcast=True) & 0xFFFF0000) | (lo.to(tl.uint32, bitcast=True) >> 16)
    # One int32 per packed byte, the low nibble's bf16 in the low half as the output's element
    # order wants, stored with the load's own indexing (no layout change between them).
    if EVEN:
        tl.store(out_ptr + r3 * kbytes + kbyte, pair)
    else:
        tl.store(out_ptr + r3 * kbytes + kbyte, pair, mask=mask)


@triton.jit
def dequant_pair(qa, sfa, outa, rows_a, sfa_col_tiles, tiles_a,
                 qb, sfb, outb, rows_b, sfb_col_tiles,
                 kbytes, alpha_ptr,
                 BR: tl.constexpr, NV: tl.constexpr, VB: tl.constexpr, NVFP4: tl.constexpr,
                 A_SF_TILE_ROWS: tl.constexpr, ALPHA_A: tl.constexpr,
                 A_EVEN: tl.constexpr, B_EVEN: tl.constexpr, BPB: tl.constexpr):
    pid = tl.program_id(0)
    if pid < tiles_a:
        _tile(qa, sfa, outa, rows_a, kbytes, sfa_col_tiles, pid, alpha_ptr,
              BR, NV, VB, NVFP4, A_SF_TILE_ROWS, ALPHA_A, A_EVEN, BPB)
    else:
        _tile(qb, sfb, outb, rows_b, kbytes, sfb_col_tiles, pid - tiles_a, alpha_ptr,
              BR, NV, VB, NVFP4, 128, False, B_EVEN, BPB)
