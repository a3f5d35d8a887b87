"""CPU emulation of the kernel's arithmetic: the prmt decode tables (all 16 codes in every
nibble position), the NVFP4 weight word code and its 4-shift decode, the scale conversions, and the lane/fragment mapping of mma.sync m16n8k16
over the prepared layout, compared with the exact reference. It checks the index math of
csrc/fp4_decode.cuh and the two kernels (fp4_gemv.cu stream-K, fp4_splitk.cu split-K; they share the
decode and the fragment mapping) without a GPU; the GPU tests check the compiled kernel itself."""

import dataclasses
import math
import random
import struct

import numpy as np
import pytest
import torch

import fp4core
from fp4core.formats.fp4 import E2M1_VALUES, Fp4Format, e4m3_decode
from fp4core.formats.layouts import SfLayout, padded_scale_shape
from fp4core.formats.reference import reference_mm, relative_error
from fp4core.dispatch.synthetic import random_operands

from fp4_trtllm import wordcode
from fp4_trtllm.layout import prepare_weight

M32 = 0xFFFFFFFF


def prmt(a, b, sel):
    """PTX prmt.b32 (default mode): byte i = {b, a}[sel nibble i & 7], or its msb replicated
    when the nibble's bit 3 is set."""
    by = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    out = 0
    for i in range(4):
        nib = (sel >> (4 * i)) & 0xF
        v = by[nib & 7]
        if nib & 8:
            v = 0xFF if v & 0x80 else 0
        out |= v << (8 * i)
    return out


def decode_word(w, mx):
    """Mirror of decode_word in csrc/fp4_decode.cuh."""
    mag = w & 0x77777777
    r = [0] * 4
    for half in range(2):
        sel = (mag >> 16) if half else mag
        ssel = (w >> 16) if half else w
        hi = prmt(0x3F3F3F00, 0x40404040, sel) if mx else prmt(0x3E3C3800, 0x46444240, sel)
        neg = prmt(0x80808080, 0x80808080, ssel)
        hi |= ((neg << 7) & M32) & 0x80808080
        if mx:
            lo = prmt(0xC0800000, 0xC0804000, sel)
            r[2 * half] = prmt(lo, hi, 0x5140)
            r[2 * half + 1] = prmt(lo, hi, 0x7362)
        else:
            r[2 * half] = prmt(hi, 0, 0x1404)
            r[2 * half + 1] = prmt(hi, 0, 0x3424)
    return r


def f16(bits):
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def bf16(bits):
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


def halves(x, mx):
    f = bf16 if mx else f16
    return f(x & 0xFFFF), f(x >> 16)


def scale_value(byte, mx):
    """The scale the kernel uses for a scale byte (E8M0 as bf16, E4M3 as fp16)."""
    if mx:
        return bf16(0x40 if byte == 0 else (0x7FC0 if byte == 0xFF else byte << 7))
    return float(e4m3_decode(torch.tensor([byte], dtype=torch.uint8))[0])


@pytest.mark.parametrize("mx", [False, True])
def test_decode_tables(mx):
    rng = random.Random(1)
    words = [rng.getrandbits(32) for _ in range(500)] + [0x01234567, 0x89ABCDEF, 0xFEDCBA98]
    for w in words:
        r = decode_word(w, mx)
        for q in range(4):
            lo, hi = halves(r[q], mx)
            n0, n1 = (w >> (8 * q)) & 0xF, (w >> (8 * q + 4)) & 0xF
            assert lo == E2M1_VALUES[n0] and math.copysign(1, lo) == math.copysign(1, E2M1_VALUES[n0])
            assert hi == E2M1_VALUES[n1] and math.copysign(1, hi) == math.copysign(1, E2M1_VALUES[n1])


def nv_weight_regs(w):
    """Mirror of decode_nv_weight in csrc/fp4_decode.cuh (an NVFP4 weight word as stored)."""
    q, x = 0x8E008E00, w >> 3
    return [((w << a) & M32 ^ x) & q for a in (0, 2, 6, 9)]


def test_nv_weight_word_code():
    """Every code in every position, both signs: the kernel's 4-shift decode of the stored
    word is the code's value * 2^-14 in fp16, in the registers decode_word fills."""
    rng = random.Random(2)
    words = [rng.getrandbits(32) for _ in range(2000)]
    words += [sum(c << (4 * i) for i in range(8)) for c in range(16)]  # one code everywhere
    words += [sum(((c + i) & 15) << (4 * i) for i in range(8)) for c in range(16)]
    nat = torch.tensor([[(w >> (8 * p)) & 0xFF for p in range(4)] for w in words], dtype=torch.uint8)
    stored = wordcode.encode(nat)
    assert torch.equal(wordcode.decode(stored), nat)
    for w, row in zip(words, stored.tolist()):
        regs = nv_weight_regs(int.from_bytes(bytes(row), "little"))
        for q in range(4):
            lo, hi = halves(regs[q], False)
            for v, code in ((lo, (w >> (8 * q)) & 0xF), (hi, (w >> (8 * q + 4)) & 0xF)):
                want = E2M1_VALUES[code]
                assert v * 2.0 ** 14 == want and math.copysign(1, v) == math.copysign(1, want)


def test_nv_weight_products_exact_in_fp16():
    """code value * 2^-14 times every finite E4M3 scale is exact in fp16 (subnormals included)."""
    codes = np.array([E2M1_VALUES[c] * 2.0 ** -14 for c in range(16)])
    scales = e4m3_decode(torch.arange(256, dtype=torch.uint8)).double().numpy()
    scales = scales[np.isfinite(scales)]
    exact = np.multiply.outer(codes, scales)
    assert np.array_equal(exact.astype(np.float16).astype(np.float64), exact)


def test_e8m0_as_bf16():
    for byte in range(255):
        assert scale_value(byte, True) == 2.0 ** (byte - 127)
    assert math.isnan(scale_value(255, True))

def nv_weight_regs_bf16(w):
    """Mirror of decode_nv_weight_bf16 in csrc/fp4_decode.cuh (a weight word in the bf16 code)."""
    q, x8, x5 = 0x81C081C0, w >> 8, w >> 5
    return [(w ^ x8) & q, ((w << 2) & M32 ^ x8) & q, ((w << 5) & M32 ^ x5) & q, ((w << 6) & M32 ^ x8) & q]


def nv_bf16_to_f16(r):
    """Mirror of nv_bf16_to_f16 in csrc/fp4_decode.cuh."""
    return (r | (r << 3)) & 0x8E008E00


def bf16_round(x):
    """x rounded to bfloat16 (nearest even), as a float."""
    return float(torch.tensor([x], dtype=torch.float64).to(torch.bfloat16).double()[0])


def test_nv_weight_as_bf16_and_its_scales_are_exact():
    """The W4A16 path: every NVFP4 word stored in the bf16 code decodes (5 shifts, 4 LOP3s) to
    value * 2^-126 in bf16, and for fp16 activations (nv_bf16_to_f16) to value * 2^-14 in fp16;
    value * 2^-126 times every finite E4M3 scale * 2^119 is a normal bf16, exactly value *
    scale * 2^-7 (what the kernel's HMUL2 produces; alpha carries 2^7)."""
    rng = random.Random(3)
    words = [rng.getrandbits(32) for _ in range(1000)]
    words += [sum(c << (4 * i) for i in range(8)) for c in range(16)]  # one code everywhere
    words += [sum(((c + i) & 15) << (4 * i) for i in range(8)) for c in range(16)]
    nat = torch.tensor([[(w >> (8 * p)) & 0xFF for p in range(4)] for w in words], dtype=torch.uint8)
    stored = wordcode.encode(nat, wordcode.BF16)
    assert torch.equal(wordcode.decode(stored, wordcode.BF16), nat)
    assert not torch.equal(wordcode.decode(stored), nat)  # the two codes differ
    for w, row in zip(words, stored.tolist()):
        regs = nv_weight_regs_bf16(int.from_bytes(bytes(row), "little"))
        for q in range(4):
            for r, bf, scale in ((regs[q], True, 2.0 ** 126), (nv_bf16_to_f16(regs[q]), False, 2.0 ** 14)):
                lo, hi = halves(r, bf)
                for v, code in ((lo, (w >> (8 * q)) & 0xF), (hi, (w >> (8 * q + 4)) & 0xF)):
                    want = E2M1_VALUES[code]
                    assert v * scale == want and math.copysign(1, v) == math.copysign(1, want)
    scales = e4m3_decode(torch.arange(256, dtype=torch.uint8)).double().numpy()
    for sc in scales[np.isfinite(scales)]:
        up = bf16_round(sc * 2.0 ** 119)
        assert up == sc * 2.0 ** 119 and up < 2.0 ** 128
        for code in range(16):
            v = E2M1_VALUES[code] * 2.0 ** -126
            prod = v * up
            assert bf16_round(prod) == prod == E2M1_VALUES[code] * sc * 2.0 ** -7
            assert prod == 0 or abs(prod) >= 2.0 ** -126  # normal: no subnormal product


def emulate(problem, ops, T=2, W=2, S=3):
    """Values of one launch of fp4_splitk_kernel (T tiles per warp, W warps, S splits), lane by
    lane. A weight-only problem (problem.act_dtype set) runs the W4A16 variant: the lane's 32
    activation bytes go into the ring as two 16-byte halves and come back as B fragments; NVFP4
    weights take the bf16 path when the activations are bf16."""
    mx = problem.fmt is Fp4Format.MXFP4
    m, n, k = problem.m, problem.n, problem.k
    act = problem.act_dtype
    w, s = prepare_weight(ops.b, ops.b_scale, problem.fmt, code="f16" if act is None else "bf16")
    wb = w.numpy(); sb = s.numpy()
    if act is None:
        ab = ops.a.numpy(); asf = ops.a_scale.numpy()
    else:
        a16 = ops.a.contiguous().view(torch.uint8).numpy()  # (m, 2k) bytes of the bf16/fp16 rows
        bf_mma = act == torch.bfloat16
    chunks = k // 64; m_tiles = math.ceil(n / 16)
    NT = 1 if m <= 8 else 2 if m <= 16 else 4 if m <= 32 else 8
    _, pcol = padded_scale_shape(m, k // problem.block_size, problem.a_sf_layout)
    coltiles = pcol // 4; e8 = problem.a_sf_layout is SfLayout.layout_8x4
    tile_bytes = 32 if e8 else 512
    out = np.full((m, n), np.nan)
    gx = math.ceil(m_tiles / (W * T)); gz = math.ceil(m / (8 * NT))
    def lanevals(raw8, sc, weight=False):  # 8 bytes -> 8 regs of 2 values
        w0 = int.from_bytes(bytes(raw8[:4]), 'little'); w1 = int.from_bytes(bytes(raw8[4:]), 'little')
        if weight and not mx and act == torch.bfloat16:  # bf16 path: value * 2^-126, scale * 2^119
            regs = nv_weight_regs_bf16(w0) + nv_weight_regs_bf16(w1)
            up = bf16_round(sc * 2.0 ** 119)
            vals = [[bf16_round(v * up) for v in halves(r, True)] for r in regs]
            return [[v * 2.0 ** 7 for v in pair] for pair in vals]  # alpha carries 2^7
        if weight and not mx and act == torch.float16:  # the bf16 code moved to fp16: value * 2^-14
            regs = [nv_bf16_to_f16(r) for r in nv_weight_regs_bf16(w0) + nv_weight_regs_bf16(w1)]
            return [[v * sc * 2.0 ** 14 for v in halves(r, False)] for r in regs]
        if weight and not mx:  # word-encoded NVFP4 weight: value * 2^-14, undone here as alpha does
            regs, sc = nv_weight_regs(w0) + nv_weight_regs(w1), sc * 2.0 ** 14
        else:
            regs = decode_word(w0, mx) + decode_word(w1, mx)
        return [[v * sc for v in halves(r, mx)] for r in regs]

    def act_regs(mm, c, t):  # W4A16: the lane's 32 bytes via the ring's two 16-byte halves
        row = a16[mm if mm < m else 0]
        raw = bytes(row[2 * (64 * c + 16 * t): 2 * (64 * c + 16 * t) + 32])
        ring = {0: raw[:16], 512: raw[16:]}  # slot offsets of the two halves (lane * 16 added)
        words = [int.from_bytes(ring[h][4 * i: 4 * i + 4], "little") for h in (0, 512) for i in range(4)]
        return [list(halves(x, bf_mma)) for x in words]
    for bx in range(gx):
        for bz in range(gz):
            m0 = bz * 8 * NT
            partial = []
            for by in range(S):
                cb = chunks * by // S; ce = chunks * (by + 1) // S
                acc = {}
                for warp in range(W):
                    tile0 = (bx * W + warp) * T
                    for c in range(cb, ce):
                        # B fragments per lane
                        bv = {}
                        for j in range(NT):
                            for lane in range(32):
                                g, t = lane >> 2, lane & 3
                                mm = m0 + 8*j + g
                                if act is not None:
                                    bv[j, lane] = act_regs(mm, c, t)  # rows past M: row 0, never stored
                                elif mm < m:
                                    raw = ab[mm, c*32 + 8*t: c*32 + 8*t + 8]
                                    rb = (mm >> 3) * coltiles * 32 + (mm & 7) * 4 if e8 else (mm >> 7) * coltiles * 512 + (mm & 31) * 16 + ((mm >> 5) & 3) * 4
                                    base = rb + ((t >> 1) if mx else t)
                                    off = ((c >> 1) * tile_bytes + ((c & 1) << 1)) if mx else c * tile_bytes
                                    sc = scale_value(int(asf[base + off]), mx)
                                    bv[j, lane] = lanevals(raw, sc)
                                else:
                                    bv[j, lane] = [[0.0, 0.0]] * 8
                        for i in range(T):
                            tile = tile0 + i
                            if tile >= m_tiles: continue
                            av = {}
                            for lane in range(32):
                                blk = ((tile // 16) * chunks + c) * 16 + tile % 16  # piece of (tile, c)
                                raw = wb[blk*512 + lane*16: blk*512 + lane*16 + 16]
                                sw = sb[blk*(16 if mx else 32)*2 + ((lane >> 1) if mx else lane)*2:][:2]
                                av[lane] = (lanevals(raw[:8], scale_value(int(sw[0]), mx), True),
                                            lanevals(raw[8:], scale_value(int(sw[1]), mx), True))
                            for st in range(4):
                                A = np.zeros((16, 16)); 
                                for lane in range(32):
                                    g, t = lane >> 2, lane & 3
                                    lo, hi = av[lane]
                                    A[g, 2*t:2*t+2] = lo[2*st]; A[g+8, 2*t:2*t+2] = hi[2*st]
                                    A[g, 2*t+8:2*t+10] = lo[2*st+1]; A[g+8, 2*t+8:2*t+10] = hi[2*st+1]
                                for j in range(NT):
                                    B = np.zeros((16, 8))
                                    for lane in range(32):
                                        g, t = lane >> 2, lane & 3
                                        B[2*t:2*t+2, g] = bv[j, lane][2*st]; B[2*t+8:2*t+10, g] = bv[j, lane][2*st+1]
                                    C = A @ B
                                    key = (tile, j)
                                    acc[key] = acc.get(key, 0) + C
                partial.append(acc)
            alpha = float(ops.alpha) if ops.alpha is not None else 1.0
            keys = set().union(*[p.keys() for p in partial])
            for key in keys:
                tile, j = key
                Csum = sum(p.get(key, 0) for p in partial)
                for r in range(16):
                    for col in range(8):
                        nn = tile*16 + r; mm = m0 + 8*j + col
                        if nn < n and mm < m: out[mm, nn] = Csum[r, col] * alpha
    return out



CASES = [(5, 40, 128, 2, 2, 3), (17, 48, 192, 2, 2, 3), (3, 16, 256, 2, 2, 3), (70, 16, 128, 1, 1, 2)]


@pytest.mark.parametrize("nv", [True, False], ids=["nvfp4", "mxfp4"])
@pytest.mark.parametrize("e8", [False, True], ids=["a128x4", "a8x4"])
@pytest.mark.parametrize("m,n,k,t,w,s", CASES)
def test_fragment_mapping_matches_reference(m, n, k, t, w, s, nv, e8):
    p = fp4core.make_problem(m, n, k, use_nvfp4=nv, use_8x4_sf_layout=e8, device="cpu")
    ops = random_operands(p, device="cpu", generator=torch.Generator().manual_seed(m + n + k))
    got = emulate(p, ops, T=t, W=w, S=s)
    assert relative_error(torch.tensor(got), reference_mm(p, ops)) < 1e-12


W16_CASES = [(5, 40, 128, 2, 2, 3), (17, 48, 192, 4, 1, 2), (33, 16, 256, 1, 2, 1), (64, 300, 128, 2, 1, 2)]


@pytest.mark.parametrize("fmt,act", [("nvfp4", torch.bfloat16), ("nvfp4", torch.float16), ("mxfp4", torch.bfloat16)],
                         ids=["nvfp4-bf16", "nvfp4-fp16", "mxfp4-bf16"])
@pytest.mark.parametrize("m,n,k,t,w,s", W16_CASES)
def test_w4a16_fragment_mapping_matches_reference(m, n, k, t, w, s, fmt, act):
    """The weight-only split-K ring kernel's index math: activation bytes 2 (64 c + 16 t) of
    row m as the lane's B fragments, the weight in the same k permutation, against the float64
    reference of a x dequant(b). A swapped pair of activation halves fails it (checked below)."""
    p = fp4core.make_problem(m, n, k, use_nvfp4=fmt == "nvfp4", device="cpu", act_dtype=act)
    ops = random_operands(p, device="cpu", generator=torch.Generator().manual_seed(m + n + k))
    got = emulate(p, ops, T=t, W=w, S=s)
    assert relative_error(torch.tensor(got), reference_mm(p, ops)) < 1e-12
    # the check can fail: the activation with its 16-value halves swapped gives another answer
    swapped = ops.a.view(m, k // 32, 2, 16).flip(2).reshape(m, k)
    bad = emulate(p, dataclasses.replace(ops, a=swapped), T=t, W=w, S=s)
    assert relative_error(torch.tensor(bad), reference_mm(p, ops)) > 1e-2
