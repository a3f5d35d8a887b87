"""Triton kernels: FP4 (E2M1) unpacking and block scaling inside a tensor-core GEMM.

Importing this module imports Triton; the plugin imports it lazily, on the first ``run``.

Exact, cheap dequantization:

* An E2M1 code's three magnitude bits moved under bits 4..2 of an FP8 E4M3 byte (sign to
  bit 7) give exactly ``value * 2**-6`` (code 1, the E2M1 subnormal 0.5, lands on the E4M3
  subnormal 2**-7), so a few shifts/masks per 32-bit word of 8 codes and the hardware
  FP8x2 -> fp16x2 convert decode them (``_decode_asm``: inline PTX, 4 bytes at a time;
  ``_decode_triton``: the same in plain Triton, per byte, kept as a fallback tactic).
* NVFP4 scales are E4M3: ``scale * 64`` is exact in fp16 (at most 28672), and so is every
  ``value * scale`` product (at most 6 significant bits, 2**-10 .. 2688): the dot runs on
  fp16 tensor cores with fp32 accumulation.
* MXFP4 scales are powers of two (E8M0): the products are exact in bf16, so the dot runs on
  bf16. (Scales above 2**121 overflow bf16; no real tensor has them.)

K order: a K step of BLOCK_K values is BLOCK_K/2 bytes; the low nibbles (even K) and the
high nibbles (odd K) of the same bytes form two (rows, BLOCK_K/2) operands and the step is
two dots, lo.lo^T + hi.hi^T -- the sum over K does not care about the order, and no
interleaving is needed. The optional pre-pass ``dequant_rows_kernel`` writes A densely in
the same order (all even K, then all odd K) so the GEMM loads it without decoding.
"""

import triton
import triton.language as tl


@triton.jit
def _decode_scale(s, NVFP4: tl.constexpr):
    """uint8 scale bytes -> 64 * scale in the dot's dtype (fp16 for NVFP4, bf16 for MXFP4)."""
    if NVFP4:
        # E4M3 -> fp16 is exact (0x7F/0xFF are NaN in both); *64 stays exact below 65504.
        return (s.to(tl.float8e4nv, bitcast=True).to(tl.float16) * 64.0).to(tl.float16)
    else:
        e = s.to(tl.int32)
        # 2^(e-127): e == 0 is the fp32 subnormal 2^-127; 0xFF is NaN.
        bits = tl.where(e == 0, 0x00400000, e << 23)
        val = bits.to(tl.float32, bitcast=True)
        val = tl.where(e == 255, float("nan"), val)
        return (val * 64.0).to(tl.bfloat16)


@triton.jit
def _decode_asm(q):
    """uint8 packed codes -> (low-nibble values, high-nibble values), fp16, times 2**-6."""
    return tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 t0, t1, t2;
        .reg .b16 h0, h1, h2, h3;
        shl.b32 t0, $4, 2;
        and.b32 t0, t0, 0x1C1C1C1C;
        shl.b32 t1, $4, 4;
        and.b32 t1, t1, 0x80808080;
        or.b32 t0, t0, t1;
        mov.b32 {h0, h1}, t0;
        cvt.rn.f16x2.e4m3x2 $0, h0;
        cvt.rn.f16x2.e4m3x2 $1, h1;
        shr.b32 t2, $4, 2;
        and.b32 t2, t2, 0x1C1C1C1C;
        and.b32 t1, $4, 0x80808080;
        or.b32 t2, t2, t1;
        mov.b32 {h2, h3}, t2;
        cvt.rn.f16x2.e4m3x2 $2, h2;
        cvt.rn.f16x2.e4m3x2 $3, h3;
        }
        """,
        constraints="=r,=r,=r,=r,r", args=[q], dtype=(tl.float16, tl.float16), is_pure=True, pack=4)


@triton.jit
def _decode_triton(q):
    """Same result as ``_decode_asm`` in plain Triton (one byte at a time)."""
    lo = ((q & 0x7) << 2) | ((q & 0x8) << 4)
    hi = ((q >> 2) & 0x1C) | (q & 0x80)
    return (lo.to(tl.float8e4nv, bitcast=True).to(tl.float16),
            hi.to(tl.float8e4nv, bitcast=True).to(tl.float16))


@triton.jit
def _dequant(q, s, R: tl.constexpr, NB: tl.constexpr, BPB: tl.constexpr,
             NVFP4: tl.constexpr, ASM: tl.constexpr):
    """q: uint8 (R, NB*BPB) packed codes, s: uint8 (R, NB) scale bytes ->
    (even-K values, odd-K values), each (R, NB*BPB) fp16 (NVFP4) or bf16 (MXFP4)."""
    if ASM:
        lo, hi = _decode_asm(q)
    else:
        lo, hi = _decode_triton(q)
    sc = tl.reshape(tl.broadcast_to(_decode_scale(s, NVFP4)[:, :, None], (R, NB, BPB)), (R, NB * BPB))
    if NVFP4:
        return (lo * sc).to(tl.float16), (hi * sc).to(tl.float16)
    else:
        return (lo.to(tl.bfloat16) * sc).to(tl.bfloat16), (hi.to(tl.bfloat16) * sc).to(tl.bfloat16)


@triton.jit
def _sf_row_offsets(rows, ctiles, LAYOUT_8X4: tl.constexpr):
    """Byte offset of scale (row, column 0) in a 128x4 or 8x4 swizzled scale matrix."""
    if LAYOUT_8X4:
        return (rows // 8) * (ctiles * 32) + (rows % 8) * 4
    else:
        return (rows // 128) * (ctiles * 512) + (rows % 32) * 16 + ((rows // 32) % 4) * 4


@triton.jit
def _sf_col_offsets(cols, LAYOUT_8X4: tl.constexpr):
    """Byte offset of scale column ``cols`` within its row's tiles (see fp4core.formats.layouts)."""
    if LAYOUT_8X4:
        return (cols // 4) * 32 + cols % 4
    else:
        return (cols // 4) * 512 + cols % 4


@triton.jit
def fp4_gemm_kernel(
        a_ptr, a_sf_ptr, b_ptr, b_sf_ptr, alpha_ptr, c_ptr,
        M, N, K, a_sf_ctiles, b_sf_ctiles,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, NVFP4: tl.constexpr,
        A_SF_8X4: tl.constexpr, HAS_ALPHA: tl.constexpr, SWAP_AB: tl.constexpr,
        EVEN_K: tl.constexpr, ASM: tl.constexpr, A_DENSE: tl.constexpr, A_PLAIN: tl.constexpr = False):
    """out (M, N) = alpha * dequant(A) @ dequant(B)^T, or fp32 partial sums when SPLIT_K > 1.

    a: uint8 (M, K/2) row-major packed codes, or with A_DENSE the (M, K) fp16/bf16 output
    of ``dequant_rows_kernel`` (even K then odd K; a_sf unused); b: uint8 (N, K/2)
    row-major; a_sf: A's scales in 128x4 (or 8x4 when A_SF_8X4) order; b_sf: B's scales in
    128x4 order; ``*_sf_ctiles`` = padded scale columns / 4. c: (M, N) in the output dtype,
    or fp32 (SPLIT_K, M, N) partials. The launcher makes SPLIT_K divide the K steps.
    SWAP_AB computes each tile as B @ A^T so that N fills the MMA's M side (small M).
    A_PLAIN (weight-only, W4A16): a is the (M, K) bf16/fp16 activation in natural K order
    (a_sf unused); each K step loads its even and its odd columns (stride 2) as the two dot
    operands, and the decoded weight is cast to a's dtype (exact: at most 6 significant bits).
    """
    SF_BLOCK: tl.constexpr = 16 if NVFP4 else 32
    BPB: tl.constexpr = SF_BLOCK // 2            # bytes per scale block
    NB: tl.constexpr = BLOCK_K // SF_BLOCK       # scale blocks per K step
    KB: tl.constexpr = BLOCK_K // 2              # bytes per K step

    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row tiles share each weight column tile while it is in L2.
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Rows past the end read the last row (no load masks); the store drops them.
    rm_c = tl.minimum(rm, M - 1)
    rn_c = tl.minimum(rn, N - 1)
    kbytes = K // 2
    nblocks = K // SF_BLOCK
    kb = tl.arange(0, KB)

    if A_PLAIN:
        a_ptrs = a_ptr + rm_c.to(tl.int64)[:, None] * K + 2 * kb[None, :]
    elif A_DENSE:
        a_ptrs = a_ptr + rm_c.to(tl.int64)[:, None] * K + kb[None, :]
    else:
        a_ptrs = a_ptr + rm_c.to(tl.int64)[:, None] * kbytes + kb[None, :]
        a_sf_rows = a_sf_ptr + _sf_row_offsets(rm_c, a_sf_ctiles, A_SF_8X4).to(tl.int64)[:, None]
    b_ptrs = b_ptr + rn_c.to(tl.int64)[:, None] * kbytes + kb[None, :]
    b_sf_rows = b_sf_ptr + _sf_row_offsets(rn_c, b_sf_ctiles, False).to(tl.int64)[:, None]
    cb = tl.arange(0, NB)

    per_split = tl.cdiv(K, BLOCK_K) // SPLIT_K
    first = pid_k * per_split

    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(first, first + per_split):
        cols = step * NB + cb
        if EVEN_K:
            qb = tl.load(b_ptrs + step * KB)
            sb = tl.load(b_sf_rows + _sf_col_offsets(cols, False)[None, :])
        else:
            kin = (step * KB + kb)[None, :] < kbytes
            cin = (cols < nblocks)[None, :]
            qb = tl.load(b_ptrs + step * KB, mask=kin, other=0)
            sb = tl.load(b_sf_rows + _sf_col_offsets(cols, False)[None, :], mask=cin, other=0)
        blo, bhi = _dequant(qb, sb, BLOCK_N, NB, BPB, NVFP4, ASM)
        if A_PLAIN:
            if EVEN_K:
                alo = tl.load(a_ptrs + step * BLOCK_K)
                ahi = tl.load(a_ptrs + 1 + step * BLOCK_K)
            else:
                alo = tl.load(a_ptrs + step * BLOCK_K, mask=kin, other=0.0)
                ahi = tl.load(a_ptrs + 1 + step * BLOCK_K, mask=kin, other=0.0)
            blo = blo.to(alo.dtype)
            bhi = bhi.to(alo.dtype)
        elif A_DENSE:
            if EVEN_K:
                alo = tl.load(a_ptrs + step * KB)
                ahi = tl.load(a_ptrs + kbytes + step * KB)
            else:
                alo = tl.load(a_ptrs + step * KB, mask=kin, other=0.0)
                ahi = tl.load(a_ptrs + kbytes + step * KB, mask=kin, other=0.0)
        else:
            if EVEN_K:
                qa = tl.load(a_ptrs + step * KB)
                sa = tl.load(a_sf_rows + _sf_col_offsets(cols, A_SF_8X4)[None, :])
            else:
                qa = tl.load(a_ptrs + step * KB, mask=kin, other=0)
                sa = tl.load(a_sf_rows + _sf_col_offsets(cols, A_SF_8X4)[None, :], mask=cin, other=0)
            alo, ahi = _dequant(qa, sa, BLOCK_M, NB, BPB, NVFP4, ASM)
        if SWAP_AB:
            acc = tl.dot(blo, tl.trans(alo), acc)
            acc = tl.dot(bhi, tl.trans(ahi), acc)
        else:
            acc = tl.dot(alo, tl.trans(blo), acc)
            acc = tl.dot(ahi, tl.trans(bhi), acc)

    if SWAP_AB:
        acc = tl.trans(acc)
    c_off = rm.to(tl.int64)[:, None] * N + rn[None, :]
    mask_c = (rm < M)[:, None] & (rn < N)[None, :]
    if SPLIT_K == 1:
        if HAS_ALPHA:
            acc = acc * tl.load(alpha_ptr)
        tl.store(c_ptr + c_off, acc.to(c_ptr.dtype.element_ty), mask=mask_c)
    else:
        tl.store(c_ptr + pid_k.to(tl.int64) * M * N + c_off, acc, mask=mask_c)


@triton.jit
def dequant_rows_kernel(q_ptr, sf_ptr, out_ptr, M, K, sf_ctiles,
                        BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, NVFP4: tl.constexpr,
                        SF_8X4: tl.constexpr, ASM: tl.constexpr):
    """A (M, K/2) packed + scales -> out (M, K) fp16 (NVFP4) / bf16 (MXFP4), exact, with
    row r = [values at even K..., values at odd K...] (the GEMM's A_DENSE order)."""
    SF_BLOCK: tl.constexpr = 16 if NVFP4 else 32
    BPB: tl.constexpr = SF_BLOCK // 2
    NB: tl.constexpr = BLOCK_K // SF_BLOCK
    KB: tl.constexpr = BLOCK_K // 2
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    kb = tl.program_id(1) * KB + tl.arange(0, KB)
    cols = tl.program_id(1) * NB + tl.arange(0, NB)
    kbytes = K // 2
    rmask = (r < M)[:, None]
    q = tl.load(q_ptr + r.to(tl.int64)[:, None] * kbytes + kb[None, :],
                mask=rmask & (kb < kbytes)[None, :], other=0)
    s_off = _sf_row_offsets(r, sf_ctiles, SF_8X4).to(tl.int64)[:, None] + _sf_col_offsets(cols, SF_8X4)[None, :]
    s = tl.load(sf_ptr + s_off, mask=rmask & (cols < K // SF_BLOCK)[None, :], other=0)
    lo, hi = _dequant(q, s, BLOCK_R, NB, BPB, NVFP4, ASM)
    o = out_ptr + r.to(tl.int64)[:, None] * K + kb[None, :]
    omask = rmask & (kb < kbytes)[None, :]
    tl.store(o, lo, mask=omask)
    tl.store(o + kbytes, hi, mask=omask)


@triton.jit
def splitk_reduce_kernel(ws_ptr, alpha_ptr, c_ptr, MN, SPLIT_K: tl.constexpr,
                         HAS_ALPHA: tl.constexpr, BLOCK: tl.constexpr):
    """c[i] = alpha * sum_s ws[s, i] for the flat (M*N) output; fixed order (deterministic)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(ws_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_ALPHA:
        acc = acc * tl.load(alpha_ptr)
    tl.store(c_ptr + offs, acc.to(c_ptr.dtype.element_ty), mask=mask)
