// Shared by fp4_gemv.cu (stream-K kernel) and fp4_splitk.cu (split-K kernel): exact
// E2M1/E4M3/E8M0 decoding into fp16/bf16 MMA operands, and mma.sync.
#pragma once
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace {

// The prepared layout's piece of (tile of 16 rows, 64-wide K chunk): tiles in groups of
// kTileGroup, chunk-major inside a group, so a group's pieces of one chunk are contiguous
// (fp4_trtllm/layout.py). A piece is 512 weight bytes and 64 (NVFP4) or 32 (MXFP4) scale
// bytes; the next chunk of a tile is kTileGroup pieces further on.
constexpr int kTileGroup = 16;
__device__ __forceinline__ size_t piece_of(int tile, int chunk, int chunks) {
    return ((size_t)(tile / kTileGroup) * chunks + chunk) * kTileGroup + tile % kTileGroup;
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

// The "a" operands of the table prmts. ptxas keeps such constants in uniform registers and
// moves them into a vector register before every PRMT (one extra instruction per lookup).
// OR-ing in a zero it cannot prove zero and that differs per thread (the sign bit of m > 0,
// masked by the thread index) makes them ordinary registers that stay put.
struct Tables {
    uint32_t hi, sgn, lo;
    template <bool MX>
    __device__ __forceinline__ static Tables make(int m) {
        const uint32_t zero = ((uint32_t)m >> 31) & threadIdx.x;
        return Tables{(MX ? 0x3F3F3F00u : 0x3E3C3800u) | zero, 0x80808080u | zero, 0xC0800000u | zero};
    }
};

// One 32-bit word of 8 E2M1 codes -> 4 registers of 2 values (byte r -> register r:
// low nibble in the low half). MX selects bf16 bit patterns, else fp16.
template <bool MX>
__device__ __forceinline__ void decode_word(uint32_t w, uint32_t (&r)[4], const Tables& tb) {
    // prmt looks up 8 bytes {b, a} by the low 3 bits of each selector nibble; the nibble's
    // bit 3 (the E2M1 sign) would switch to sign-replicate mode, so mask it for the value
    // lookup. The sign comes from that mode on a table of 0x80 bytes: 0x80 for a positive
    // code, 0xFF (msb replicated) for a negative one; bit 0 tells them apart.
    const uint32_t mag = w & 0x77777777u;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const uint32_t sel = half ? (mag >> 16) : mag;
        const uint32_t ssel = half ? (w >> 16) : w;
        uint32_t hi = MX ? prmt(tb.hi, 0x40404040u, sel)    // bf16 high bytes of 0..6
                         : prmt(tb.hi, 0x46444240u, sel);   // fp16 high bytes
        const uint32_t neg = prmt(tb.sgn, 0x80808080u, ssel);
        hi |= (neg << 7) & 0x80808080u;
        if (MX) {
            const uint32_t lo = prmt(tb.lo, 0xC0804000u, sel);  // bf16 low bytes
            r[2 * half] = prmt(lo, hi, 0x5140u);
            r[2 * half + 1] = prmt(lo, hi, 0x7362u);
        } else {  // fp16 low bytes are all zero
            r[2 * half] = prmt(hi, 0u, 0x1404u);
            r[2 * half + 1] = prmt(hi, 0u, 0x3424u);
        }
    }
}

// One stored word of an NVFP4 weight (re-encoded by prepare: fp4_trtllm/wordcode.py) -> the
// same 4 registers as decode_word<false> gives for the natural word, but each half is the
// code's value times 2^-14 (the E2M1 exponent sits in the low bits of the fp16 exponent, so
// e = 0 is fp16's subnormal range, exactly E2M1's own subnormal). The encoding is chosen so
// that this is 4 shifts and 4 LOP3s per 8 codes, against ~17 instructions for the table
// lookup. Products with the fp16 block scale stay exact (multiples of 2^-24 below 2^-14,
// <= 6 significant bits above); the kernels multiply alpha by kNvWeightScale to undo 2^-14.
constexpr float kNvWeightScale = 16384.0f;
__device__ __forceinline__ void decode_nv_weight(uint32_t w, uint32_t (&r)[4]) {
    constexpr uint32_t Q = 0x8E008E00u;  // sign and e1 e0 m of both halves
    const uint32_t x = w >> 3;
    r[0] = (w ^ x) & Q;
    r[1] = ((w << 2) ^ x) & Q;
    r[2] = ((w << 6) ^ x) & Q;
    r[3] = ((w << 9) ^ x) & Q;
}

// A stored weight word: MXFP4 weights keep the natural codes (bf16 table decode), NVFP4
// weights are word-encoded (value * 2^-14, see decode_nv_weight).
template <bool MX>
__device__ __forceinline__ void decode_weight(uint32_t w, uint32_t (&r)[4], const Tables& tb) {
    if (MX) decode_word<true>(w, r, tb);
    else decode_nv_weight(w, r);
}

// What the kernels multiply the fp32 accumulators by besides alpha.
template <bool MX>
__device__ __forceinline__ float weight_scale() { return MX ? 1.0f : kNvWeightScale; }

// Two scale bytes (low 16 bits of `two`) -> a register holding both scales as fp16 (E4M3)
// or bf16 (E8M0), byte 0 in the low half.
template <bool MX>
__device__ __forceinline__ uint32_t scales2(uint32_t two) {
    if (MX) {
        // E8M0 2^(e-127) is a bf16 with exponent field e. e = 0 is the subnormal 2^-127 and
        // e = 255 is NaN; both are rare, so fix them up off the fast path.
        const uint32_t x = __byte_perm(two, 0u, 0x4140u);  // [e0, 0, e1, 0]
        uint32_t bits = x << 7;
        if (__vcmpeq2(x, 0u) | __vcmpeq2(x, 0x00FF00FFu)) {
            const uint32_t lo = x & 0xFFu, hi = x >> 16;
            const uint32_t l = lo == 0 ? 0x0040u : (lo == 0xFFu ? 0x7FC0u : lo << 7);
            const uint32_t h = hi == 0 ? 0x0040u : (hi == 0xFFu ? 0x7FC0u : hi << 7);
            bits = l | (h << 16);
        }
        return bits;
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    uint32_t r;
    asm("{\n .reg .b16 t;\n cvt.u16.u32 t, %1;\n cvt.rn.f16x2.e4m3x2 %0, t;\n}" : "=r"(r) : "r"(two));
    return r;
#else
    // E4M3 -> fp16 by moving exponent+mantissa up 7 bits (the value * 2^-8, subnormals included
    // since fp16 has the range), then an exact multiply by 256; 0x7F is NaN.
    uint32_t out = 0;
#pragma unroll
    for (int b = 0; b < 2; ++b) {
        const uint32_t byte = (two >> (8 * b)) & 0xFFu, e = byte & 0x7Fu;
        const uint32_t bits = ((byte & 0x80u) << 8) | (e << 7);
        uint32_t hb = __half_as_ushort(__hmul(__ushort_as_half((unsigned short)bits), __ushort_as_half(0x5C00)));
        if (e == 0x7Fu) hb = 0x7E00u;
        out |= hb << (16 * b);
    }
    return out;
#endif
}

// One stored word of an NVFP4 weight prepared for weight-only calls (the "bf16" word code of
// fp4_trtllm/wordcode.py) -> 4 registers of bf16 patterns: sign in bit 15, e1 e0 in the low bits
// of the bf16 exponent and m at the top of its mantissa, so each half is the code's value times
// 2^-126 (e = 0 lands in bf16's subnormals, E2M1's own subnormal again). Same register order as
// decode_nv_weight. 5 shifts and 4 LOP3s (no shift set with one common right shift is invertible).
__device__ __forceinline__ void decode_nv_weight_bf16(uint32_t w, uint32_t (&r)[4]) {
    constexpr uint32_t Q = 0x81C081C0u;  // sign and e1 e0 m of both halves
    const uint32_t x8 = w >> 8, x5 = w >> 5;
    r[0] = (w ^ x8) & Q;
    r[1] = ((w << 2) ^ x8) & Q;
    r[2] = ((w << 5) ^ x5) & Q;
    r[3] = ((w << 6) ^ x8) & Q;
}

// The same values as fp16 patterns (fp16 activations with a weight in the bf16 word code): the
// three magnitude bits move up by 3 to bits 11..9, each half becomes value * 2^-14, exactly what
// decode_nv_weight gives. One shift and one LOP3 per register.
__device__ __forceinline__ uint32_t nv_bf16_to_f16(uint32_t r) { return (r | (r << 3)) & 0x8E008E00u; }

// The block-scale factor of the bf16 path: scales are taken as scale * 2^119, so a weight
// operand is value * scale * 2^-7, a normal bf16 for every nonzero code and E4M3 scale
// (2^-17 ... 21) and exact (<= 6 significant bits); 2^119 * 448 stays below bf16's maximum.
constexpr float kNvBf16ScaleUp = 0x1p119f;
constexpr float kNvBf16WeightScale = 128.0f;  // 2^126 / 2^119: what alpha carries

// Two E4M3 scale bytes (low 16 bits of `two`) -> bf16x2 of scale * 2^119, byte 0 in the low
// half (exact: E4M3 -> fp16 -> fp32 are exact, the power of two too; NaN stays NaN).
__device__ __forceinline__ uint32_t scales2_nv_bf16(uint32_t two) {
    const uint32_t h = scales2<false>(two);
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&h));
    __nv_bfloat162 b = __floats2bfloat162_rn(f.x * kNvBf16ScaleUp, f.y * kNvBf16ScaleUp);
    return *reinterpret_cast<uint32_t*>(&b);
}

// Both halves = the low (lo = true) or high half of `x`.
__device__ __forceinline__ uint32_t bcast(uint32_t x, bool lo) {
    return __byte_perm(x, 0u, lo ? 0x1010u : 0x3232u);
}

template <bool MX>
__device__ __forceinline__ uint32_t mul2(uint32_t x, uint32_t s) {
    uint32_t d;
    if (MX) {
        __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&x),
                                   *reinterpret_cast<__nv_bfloat162*>(&s));
        d = *reinterpret_cast<uint32_t*>(&r);
    } else {
        __half2 r = __hmul2(*reinterpret_cast<__half2*>(&x), *reinterpret_cast<__half2*>(&s));
        d = *reinterpret_cast<uint32_t*>(&r);
    }
    return d;
}

// x times the low (LO) or high half of s in both lanes. Written with the half2 broadcast
// intrinsics so that ptxas folds the broadcast into HMUL2's operand selector (.H0_H0 /
// .H1_H1) instead of spending a PRMT on it.
template <bool MX, bool LO>
__device__ __forceinline__ uint32_t mul2_by_half(uint32_t x, uint32_t s) {
    uint32_t d;
    if (MX) {
        const __nv_bfloat162 sv = *reinterpret_cast<__nv_bfloat162*>(&s);
        __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&x),
                                   LO ? __low2bfloat162(sv) : __high2bfloat162(sv));
        d = *reinterpret_cast<uint32_t*>(&r);
    } else {
        const __half2 sv = *reinterpret_cast<__half2*>(&s);
        __half2 r = __hmul2(*reinterpret_cast<__half2*>(&x), LO ? __low2half2(sv) : __high2half2(sv));
        d = *reinterpret_cast<uint32_t*>(&r);
    }
    return d;
}

template <bool MX>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if (MX) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

}  // namespace
