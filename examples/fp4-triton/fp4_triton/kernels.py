"""Triton kernels: FP4 (E2M1) unpacking and block scaling inside a tensor-core GEMM.

Importing this module imports Triton; the plugin imports it lazily, on the first ``run``.

Dequantization is exact and cheap:

* An E2M1 code's three magnitude bits put under bits 4..2 of an FP8 E4M3 byte (sign to bit 7)
  give exactly ``value * 2**-6`` (code 1, the E2M1 subnormal 0.5, lands on the E4M3
  subnormal 2**-7), so one shift/mask per nibble and the hardware FP8 -> fp16/bf16 convert
  decode it.
* NVFP4 scales are E4M3: ``scale * 64`` is exact in fp16 (at most 28672), and so is every
  ``value * scale`` product (at most 6 significant bits, 2**-10 .. 2688): the dot runs on
  fp16 tensor cores with fp32 accumulation.
* MXFP4 scales are powers of two (E8M0): the product is exact in bf16, so the dot runs on
  bf16. (Scales above 2**121 overflow bf16; no real tensor has them.)

K is consumed in steps of BLOCK_K values = BLOCK_K/2 bytes, loaded as a 3-D tile
(rows, scale blocks, bytes per block) so each block's scale broadcasts without a reshape.
The low and high nibbles are joined back into natural K order before the dot.
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
def _dequant(q, s, R: tl.constexpr, BLOCK_K: tl.constexpr, NVFP4: tl.constexpr):
    """q: uint8 (R, NB, BPB) packed codes, s: uint8 (R, NB) scales -> (R, BLOCK_K) values."""
    # Low nibble (even K): magnitude bits 2..0 -> 4..2, sign bit 3 -> 7.
    lo = ((q & 0x7) << 2) | ((q & 0x8) << 4)
    # High nibble (odd K): magnitude bits 6..4 -> 4..2, sign bit 7 stays.
    hi = ((q >> 2) & 0x1C) | (q & 0x80)
    sc = _decode_scale(s, NVFP4)[:, :, None]
    if NVFP4:
        vlo = (lo.to(tl.float8e4nv, bitcast=True).to(tl.float16) * sc).to(tl.float16)
        vhi = (hi.to(tl.float8e4nv, bitcast=True).to(tl.float16) * sc).to(tl.float16)
    else:
        vlo = (lo.to(tl.float8e4nv, bitcast=True).to(tl.bfloat16) * sc).to(tl.bfloat16)
        vhi = (hi.to(tl.float8e4nv, bitcast=True).to(tl.bfloat16) * sc).to(tl.bfloat16)
    # (R, NB, BPB, 2) in memory order is element 2*byte + nibble: natural K order.
    return tl.reshape(tl.join(vlo, vhi), (R, BLOCK_K))


@triton.jit
def _sf_row_offsets(rows, ctiles, LAYOUT_8X4: tl.constexpr):
    """Byte offset of scale (row, column 0) in a 128x4 or 8x4 swizzled scale matrix."""
    if LAYOUT_8X4:
        return (rows // 8) * (ctiles * 32) + (rows % 8) * 4
    else:
        return (rows // 128) * (ctiles * 512) + (rows % 32) * 16 + ((rows // 32) % 4) * 4


@triton.jit
def _sf_col_offsets(cols, LAYOUT_8X4: tl.constexpr):
    """Byte offset of scale column ``cols`` within its row's tiles (see fp4core.layouts)."""
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
        EVEN_K: tl.constexpr):
    """out (M, N) = alpha * dequant(A) @ dequant(B)^T, or fp32 partial sums when SPLIT_K > 1.

    a: uint8 (M, K/2) row-major; b: uint8 (N, K/2) row-major; a_sf: A's scales in 128x4
    (or 8x4 when A_SF_8X4) order; b_sf: B's scales in 128x4 order; ``*_sf_ctiles`` = padded
    scale columns / 4. c: (M, N) out dtype, or fp32 (SPLIT_K, M, N) partials for split-K.
    SWAP_AB computes the tile as B @ A^T so that N fills the MMA's M side (small M).
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
    mask_m = rm < M
    mask_n = rn < N
    kbytes = K // 2
    nblocks = K // SF_BLOCK

    # 3-D byte tiles (rows, block, byte within block); int64 rows: N * K/2 may pass 2^31.
    jb = tl.arange(0, NB)[None, :, None] * BPB + tl.arange(0, BPB)[None, None, :]
    a_ptrs = a_ptr + rm.to(tl.int64)[:, None, None] * kbytes + jb
    b_ptrs = b_ptr + rn.to(tl.int64)[:, None, None] * kbytes + jb
    a_sf_rows = a_sf_ptr + _sf_row_offsets(rm, a_sf_ctiles, A_SF_8X4).to(tl.int64)[:, None]
    b_sf_rows = b_sf_ptr + _sf_row_offsets(rn, b_sf_ctiles, False).to(tl.int64)[:, None]
    cb = tl.arange(0, NB)

    # The launcher makes SPLIT_K divide the step count: every split gets the same range.
    per_split = tl.cdiv(K, BLOCK_K) // SPLIT_K
    first = pid_k * per_split

    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(first, first + per_split):
        cols = step * NB + cb
        col_off = _sf_col_offsets(cols, A_SF_8X4)[None, :]
        b_col_off = _sf_col_offsets(cols, False)[None, :]
        if EVEN_K:
            qa = tl.load(a_ptrs + step * KB, mask=mask_m[:, None, None], other=0)
            qb = tl.load(b_ptrs + step * KB, mask=mask_n[:, None, None], other=0)
            sa = tl.load(a_sf_rows + col_off, mask=mask_m[:, None], other=0)
            sb = tl.load(b_sf_rows + b_col_off, mask=mask_n[:, None], other=0)
        else:
            kin = (step * KB + jb) < kbytes
            cin = (cols < nblocks)[None, :]
            qa = tl.load(a_ptrs + step * KB, mask=mask_m[:, None, None] & kin, other=0)
            qb = tl.load(b_ptrs + step * KB, mask=mask_n[:, None, None] & kin, other=0)
            sa = tl.load(a_sf_rows + col_off, mask=mask_m[:, None] & cin, other=0)
            sb = tl.load(b_sf_rows + b_col_off, mask=mask_n[:, None] & cin, other=0)
        av = _dequant(qa, sa, BLOCK_M, BLOCK_K, NVFP4)
        bv = _dequant(qb, sb, BLOCK_N, BLOCK_K, NVFP4)
        if SWAP_AB:
            acc = tl.dot(bv, tl.trans(av), acc)
        else:
            acc = tl.dot(av, tl.trans(bv), acc)

    if SWAP_AB:
        acc = tl.trans(acc)
    c_off = rm.to(tl.int64)[:, None] * N + rn[None, :]
    mask_c = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        if HAS_ALPHA:
            acc = acc * tl.load(alpha_ptr)
        tl.store(c_ptr + c_off, acc.to(c_ptr.dtype.element_ty), mask=mask_c)
    else:
        tl.store(c_ptr + pid_k.to(tl.int64) * M * N + c_off, acc, mask=mask_c)


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
