"""Triton kernels of the SM80-SM90 dequantization (see ``dequant.py``, which imports this
module lazily: importing it needs Triton)."""

import triton
import triton.language as tl


@triton.jit
def _e2m1_f32(code):
    # code: int32 0..15. Magnitudes 2..7 are normal floats once the 3-bit (exponent,
    # mantissa) field is shifted under the fp32 exponent and rebiased (+126); magnitude 1
    # is 0.5 (the E2M1 subnormal) and 0 is zero. Bit 3 is the sign.
    mag = code & 7
    bits = tl.where(mag >= 2, (mag << 22) + (126 << 23), tl.where(mag == 1, 0x3F000000, 0))
    bits = bits | ((code & 8) << 28)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _scale_f32(s, NVFP4: tl.constexpr):
    # s: int32 0..255, one scale byte.
    if NVFP4:
        # E4M3 (fn): bias 7, subnormals m * 2^-9, 0x7F / 0xFF are NaN, no infinities.
        e = (s >> 3) & 15
        m = s & 7
        normal = (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
        val = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)
        val = tl.where((s & 0x7F) == 0x7F, (s * 0 + 0x7FC00000).to(tl.float32, bitcast=True), val)
        # Sign by bit OR: Triton lowers "-x" to "0 - x", which turns -0.0 into +0.0.
        val = (val.to(tl.int32, bitcast=True) | ((s & 0x80) << 24)).to(tl.float32, bitcast=True)
    else:
        # E8M0: 2^(s-127); s == 0 is the fp32 subnormal 2^-127; 0xFF is NaN.
        bits = tl.where(s == 0, 0x00400000, s << 23)
        val = bits.to(tl.float32, bitcast=True)
        val = tl.where(s == 255, (s * 0 + 0x7FC00000).to(tl.float32, bitcast=True), val)
    return val


@triton.jit
def _tile(q_ptr, sf_ptr, out_ptr, rows, kbytes, sf_col_tiles, tile, alpha_ptr,
          BR: tl.constexpr, NV: tl.constexpr, VB: tl.constexpr, BPB: tl.constexpr,
          NVFP4: tl.constexpr, SF_TILE_ROWS: tl.constexpr, ALPHA: tl.constexpr):
    # A tile is NV vectors of VB packed bytes x BR rows, indexed [vector, row, byte]. VB = 4
    # makes every thread own 8 consecutive bf16 outputs (one 16-byte store); putting the
    # vector axis first makes Triton spread a warp's threads along it (it breaks ties between
    # non-contiguous axes by position), so one warp store writes 512 consecutive bytes.
    # Tiles walk along K first: neighbouring programs touch neighbouring bytes.
    k_tiles = tl.cdiv(kbytes, NV * VB)
    row0 = (tile // k_tiles) * BR
    v = (tile % k_tiles) * NV + tl.arange(0, NV)
    r = row0 + tl.arange(0, BR)
    r3 = r[None, :, None].to(tl.int64)
    kbyte = v[:, None, None] * VB + tl.arange(0, VB)[None, None, :]
    mask = (r[None, :, None] < rows) & (kbyte < kbytes)
    q = tl.load(q_ptr + r3 * kbytes + kbyte, mask=mask, other=0).to(tl.int32)

    # The scale byte of (row r, block c) of every vector, read in place from the swizzled
    # layout (fp4core.layouts.scale_offsets is the same formula on the host). Vectors of one
    # block read the same byte (an L1 hit).
    r2 = r[None, :]
    c2 = (v * VB // BPB)[:, None]
    if SF_TILE_ROWS == 128:
        soff = ((r2 // 128) * sf_col_tiles + c2 // 4) * 512 + (r2 % 32) * 16 + ((r2 // 32) % 4) * 4 + c2 % 4
    else:
        soff = ((r2 // 8) * sf_col_tiles + c2 // 4) * 32 + (r2 % 8) * 4 + c2 % 4
    smask = (r2 < rows) & (v[:, None] * VB < kbytes)
    s = tl.load(sf_ptr + soff, mask=smask, other=0).to(tl.int32)
    scale = _scale_f32(s, NVFP4)[:, :, None]

    lo = _e2m1_f32(q & 15) * scale            # exact in fp32
    hi = _e2m1_f32((q >> 4) & 15) * scale
    if ALPHA:
        # Fold the GEMM's alpha into this operand: (code * scale) * alpha, rounded once in
        # fp32 and once to bf16 -- the "plain" graph's only deviation from exact dequantization.
        alpha = tl.load(alpha_ptr)
        lo = lo * alpha
        hi = hi * alpha
    # fp32 -> bf16 is cvt.rn (round to nearest even), as torch rounds. (Triton's CPU
    # interpreter truncates instead; only the alpha-folded values are inexact and notice.)
    lo = lo.to(tl.bfloat16)
    hi = hi.to(tl.bfloat16)
    # Element 2i is the low nibble, 2i+1 the high one: interleave along the last axis.
    vals = tl.interleave(lo, hi)
    col = v[:, None, None] * (2 * VB) + tl.arange(0, 2 * VB)[None, None, :]
    omask = (r[None, :, None] < rows) & (col < 2 * kbytes)
    tl.store(out_ptr + r3 * (2 * kbytes) + col, vals, mask=omask)


@triton.jit
def dequant_pair(qa, sfa, outa, rows_a, sfa_col_tiles, tiles_a,
                 qb, sfb, outb, rows_b, sfb_col_tiles,
                 kbytes, alpha_ptr,
                 BR: tl.constexpr, NV: tl.constexpr, VB: tl.constexpr, BPB: tl.constexpr,
                 NVFP4: tl.constexpr, A_SF_TILE_ROWS: tl.constexpr, ALPHA_A: tl.constexpr):
    pid = tl.program_id(0)
    if pid < tiles_a:
        _tile(qa, sfa, outa, rows_a, kbytes, sfa_col_tiles, pid, alpha_ptr,
              BR, NV, VB, BPB, NVFP4, A_SF_TILE_ROWS, ALPHA_A)
    else:
        _tile(qb, sfb, outb, rows_b, kbytes, sfb_col_tiles, pid - tiles_a, alpha_ptr,
              BR, NV, VB, BPB, NVFP4, 128, False)
