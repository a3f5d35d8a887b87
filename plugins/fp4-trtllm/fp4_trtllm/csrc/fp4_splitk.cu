// fp4-trtllm: the split-K kernel (the plugin's first kernel; beside the stream-K kernel of
// fp4_gemv.cu). Swap-AB streaming GEMM for small M, NVFP4 and MXFP4, SM80+. Chunks reach the
// registers either through a register pipeline or through a per-warp shared-memory ring
// filled with cp.async (RING > 0; the faster on every H200 decode shape measured).
//
// out (M, N) = alpha * dequant(A) (M, K) @ dequant(B)^T, B = the weight (N, K).
//
// Swap-AB: the weight's N rows are the M side of mma.sync m16n8k16 (16 weight rows per
// MMA), the activations' M rows are its N side (8 per MMA). Each warp owns T tiles of 16
// weight rows and walks K in chunks of 64; every lane holds, per tile and chunk, 16 FP4
// values of row g and 16 of row g+8 (g = lane / 4) over the same 16 k's, which is exactly
// one 16-byte load in the layout prepare() makes (see fp4_trtllm/layout.py). The k's inside
// one MMA are a permutation we choose freely as long as A and B use the same one: lane t
// (= lane % 4) covers k = 16t..16t+15 of the chunk in 4 MMA steps, so its activation values
// are one 8-byte load of row m of A, and one scale byte per row covers all its values.
//
// Dequantization is exact in registers: NVFP4 weight words arrive re-encoded by prepare so
// that 4 shifts and 4 LOP3s give fp16 bit patterns of value * 2^-14 (decode_nv_weight; alpha
// carries 2^14); activations and MXFP4 weights go through a byte-permute lookup table (prmt)
// to fp16 (NVFP4) or bf16 (MXFP4). Both are multiplied by the block scale (E4M3 -> fp16 or
// E8M0 -> bf16, exact for every product code * scale). NVFP4 uses
// fp16 MMAs because E2M1 x E4M3 is exact in fp16 and fp16 needs no low byte in the table;
// MXFP4 needs bf16's exponent range. Accumulation is fp32.
//
// Weight-only (W4A16, ACT > 0, ring tactics only): A is a plain (M, K) bf16 (ACT = 1) or fp16
// (ACT = 2) row-major matrix. Each lane copies its 16 activation values per chunk (32 bytes of
// row m at k = 64c + 16t) into the ring; they are already the MMA's B fragments in the k
// permutation above, so nothing is decoded on the activation side. bf16 activations need bf16
// MMAs: NVFP4 weights prepared for weight-only calls are in the bf16 word code, which decodes to
// bf16 patterns of value * 2^-126 in 9 instructions per word (decode_nv_weight_bf16), and their
// E4M3 scales become bf16 * 2^119; alpha carries 2^7. MXFP4 weights decode to bf16 as before;
// fp16 activations take NVFP4 weights only (E8M0 scales need bf16's range): the bf16 patterns
// move to fp16 ones (nv_bf16_to_f16, value * 2^-14) and the fp16 path of the W4A4 kernel runs.
//
// Fused quantization (ACT = 3 bf16, 4 fp16; NVFP4 only, ring tactics only): A is the plain
// (M, K) activation of a W4A4 layer whose activations are quantized per call, with a static
// global scale (p.a_gs) or a dynamic one from their own amax (p.a_gs null). The ring copies the
// raw values as in the weight-only path; in the dynamic case every CTA first takes the finite
// maximum of |A| over the whole (small) input, gs = 2688 / amax. Each lane then quantizes its
// 16 values (exactly one NVFP4 block) with the recipe of fp4core's Triton quantizer, bit for bit
// (quantize_nv_block), and feeds the codes and scale byte to the W4A4 path's decode. The weight
// is the W4A4 one (f16 word code); alpha is p.alpha when static, else 1 / (gs * w_gs) as the
// quantizer writes it. So the output is bit-identical to quantizer + this kernel's W4A4 ring
// tactic of the same shape, in one launch instead of two.
//
// Programmatic dependent launch (p.pdl, SM90+; fp4core/pdl.cuh): the ring kernels prefetch
// their first RING - 1 weight chunks into L2, then wait for the kernel ahead, then start the
// ring's copies as without PDL; the register pipeline waits before its first load. Nothing is
// read into the SM before the wait: the kernel ahead may be the one that prepared the weight.
//
// Split-K: gridDim.y CTAs share one tile of rows; each writes its fp32 partial to a
// workspace, and the last to arrive (an integer counter per tile, reset by that CTA) sums
// the partials in split order 0..S-1, so the result is bit-identical run to run.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "fp4_decode.cuh"
#include "fp4core/pdl.cuh"

extern "C" {
// Must match fp4_trtllm/launcher.py (_SplitKParams).
struct Fp4SplitKParams {
    const uint8_t* a;      // (M, K/2) packed E2M1, row-major
    const uint8_t* a_sf;   // A's scale bytes, 128x4 or 8x4 layout
    const uint8_t* b;      // prepared weight: [tile group][chunk][tile][lane][16 B]
    const uint8_t* b_sf;   // prepared scales: [tile group][chunk][tile][lane or lane/2][2 B]
    const float* alpha;    // one float, or null for 1 (a: (M, K) bf16/fp16 for W4A16, a_sf unused)
    void* out;             // (M, N) bf16 or fp16, row-major
    float* ws;             // split-K partials (splits > 1)
    int* counters;         // split-K arrival counters, zero between launches
    int m, n, k;
    int a_sf_8x4;          // A scale layout: 0 = 128x4, 1 = 8x4
    int a_sf_col_tiles;    // padded scale columns / 4
    int out_fp16;          // 0 = bf16 output, 1 = fp16
    int splits;            // gridDim.y
    int warps;             // warps per CTA
    int m_tiles;           // ceil(N / 16): tiles of weight rows
    int pdl;               // host side: launch with programmatic dependent launch (SM90+)
    const float* w_gs;     // fused dynamic quantization (ACT 3/4, a_gs null): the weight's global scale
    const float* a_gs;     // fused static quantization: the activations' global scale (alpha: p.alpha)
};
}

namespace {

// The weight is read once: keep it out of L1.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ uint32_t ld_u16(const uint16_t* p) {
    unsigned short v;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
}

// Asynchronous global -> shared copies (cp.async, SM80+): nothing is held in registers while
// they are in flight. 16-byte copies bypass L1 (.cg: the weight is read once).
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;"
                 :: "r"((uint32_t)__cvta_generic_to_shared(dst)), "l"(src) : "memory");
}
// The same with only `src_bytes` (0 or 16) read, the rest of the 16 zero-filled.
__device__ __forceinline__ void cp_async16_zfill(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :: "r"((uint32_t)__cvta_generic_to_shared(dst)), "l"(src), "r"(src_bytes) : "memory");
}
template <int BYTES>
__device__ __forceinline__ void cp_async_small(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;"
                 :: "r"((uint32_t)__cvta_generic_to_shared(dst)), "l"(src), "n"(BYTES) : "memory");
}
// A hint that the line holding `p` be in L2 soon; no data returns, no ordering is implied.
__device__ __forceinline__ void prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" :: "l"(p));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

// Raw bytes of one chunk (64 k's) for one lane: T weight tiles and NT activation tiles.
template <int T, int NT>
struct Stage {
    uint4 w[T];         // 8 bytes of row g, 8 bytes of row g+8
    uint32_t wsf[T];    // scale bytes of row g (low) and g+8
    uint2 a[NT];        // 8 bytes of activation row 8j+g
    uint32_t asf[NT];   // its scale byte
    uint4 a16[NT][2];   // W4A16: the 16 bf16/fp16 values of row 8j+g, as two 16-byte halves
};

// One warp's slot of the shared-memory ring (split-K "ring" tactics): per chunk, T weight
// tiles (each lane's 16 bytes side by side), their scale bytes (as the prepared layout has
// them, 64 or 32 bytes per tile), each lane's 8 activation bytes per activation tile, and the
// aligned 4-byte group holding the lane's activation scale byte. Every lane copies and later
// reads its own bytes, except the weight scales, which lanes 0..3 (or 0..1) copy for the warp.
// W4A16 (ACT > 0): the activation part is NT x 1024 bytes: the first 16-byte halves of the 32
// lanes, then the second halves (lane-contiguous 16-byte reads, no bank conflicts), no scales.
template <bool MX, int T, int NT, int ACT = 0>
struct RingSlot {
    static constexpr int kWsf = MX ? 32 : 64;
    static constexpr int kW = 0, kWs = T * 512, kA = kWs + T * kWsf;
    static constexpr int kAs = kA + (ACT ? NT * 1024 : NT * 256);
    static constexpr int kBytes = kAs + (ACT ? 0 : NT * 128);
};

// ACT: 0 packed FP4 activations with scales; 1/2 weight-only bf16/fp16; 3/4 bf16/fp16 quantized
// to NVFP4 in the kernel. 1..4 copy the plain activation rows into the ring.
__host__ __device__ constexpr bool weight_only(int act) { return act == 1 || act == 2; }
__host__ __device__ constexpr bool fused_quant(int act) { return act >= 3; }

// One stored weight word -> 4 registers of MMA operand pairs: bf16 (BF) or fp16 patterns.
// NVFP4 weights of weight-only calls (ACT 1/2) are in the bf16 word code, others in the f16 one.
template <bool MX, bool BF, int ACT>
__device__ __forceinline__ void decode_weight_as(uint32_t w, uint32_t (&r)[4], const Tables& tb) {
    if constexpr (!MX && weight_only(ACT)) {
        decode_nv_weight_bf16(w, r);
        if constexpr (!BF) {
#pragma unroll
            for (int q = 0; q < 4; ++q) r[q] = nv_bf16_to_f16(r[q]);
        }
    } else {
        static_assert(MX || !BF, "an f16-coded NVFP4 weight feeds fp16 MMAs only");
        decode_weight<MX>(w, r, tb);
    }
}

// Two weight scale bytes -> the pair the decoded words are multiplied by (see decode_weight_as).
template <bool MX, bool BF>
__device__ __forceinline__ uint32_t weight_scales2(uint32_t two) {
    if constexpr (MX) return scales2<true>(two);
    else if constexpr (BF) return scales2_nv_bf16(two);
    else return scales2<false>(two);
}

// MMA operand type: bf16 for MXFP4 weights and for bf16 activations, else fp16.
template <bool MX, int ACT>
constexpr bool kBf16Mma = ACT == 1 || (ACT == 0 && MX);

// --- Fused dynamic NVFP4 quantization (ACT 3/4): fp4core's Triton quantizer, bit for bit
// (fp4core/formats/kernels/quantize_triton.py: _e4m3_byte, _e4m3_value, _e2m1_magnitude,
// _quant_kernel's NVFP4 branch). Every rounding step is an explicit _rn intrinsic so nvcc cannot
// contract it differently; where the quantizer's expression may be contracted by Triton, the
// product is exact (a power-of-two multiple) and both forms round alike.

// 16-bit activation pattern (magnitude bits only or full) -> float32, exact.
template <int ACT>
__device__ __forceinline__ float act_to_float(uint32_t h) {
    if constexpr (ACT == 3) return __uint_as_float(h << 16);
    else return __half2float(__ushort_as_half((unsigned short)h));
}

// Both halves' |x| patterns, kept only where finite (positive bf16/fp16 order like their bits).
template <int ACT>
__device__ __forceinline__ uint32_t finite_abs2(uint32_t w) {
    constexpr uint32_t kInf2 = ACT == 3 ? 0x7F807F80u : 0x7C007C00u;
    const uint32_t v = w & 0x7FFF7FFFu;
    return v & __vcmpltu2(v, kInf2);
}

// Non-negative float32 (<= 448) -> E4M3 byte, round to nearest even, subnormals kept.
__device__ __forceinline__ uint32_t e4m3_byte(float v) {
    const uint32_t bits = __float_as_uint(v);
    const uint32_t normal = ((bits + 0x7FFFFu + ((bits >> 20) & 1u)) >> 20) - 960u;
    const uint32_t sub = (uint32_t)(int)__fadd_rn(__fmaf_rn(v, 512.0f, 8388608.0f), -8388608.0f);
    return v < 0.015625f ? sub : normal;
}

// E4M3 byte (0..0x7E) -> float32, exact.
__device__ __forceinline__ float e4m3_value(uint32_t b) {
    const uint32_t e = b >> 3, m = b & 7u;
    return e == 0 ? __fmul_rn((float)m, 0.001953125f) : __uint_as_float(((e + 120u) << 23) | (m << 20));
}

// E2M1 magnitude code (0..7, RNE, saturating at 6) of |q|: min(rint(2a), rint(a) + 2, rint(a/2) + 4)
// with each rint one add of 2^23 (see the quantizer's _e2m1_magnitude).
__device__ __forceinline__ uint32_t e2m1_magnitude(float q) {
    const float a = fminf(fabsf(q), 6.0f);
    const uint32_t y1 = __float_as_uint(__fmaf_rn(a, 2.0f, 8388608.0f));
    const uint32_t y2 = __float_as_uint(__fadd_rn(a, 8388610.0f));
    const uint32_t y3 = __float_as_uint(__fmaf_rn(a, 0.5f, 8388612.0f));
    return min(min(y1, y2), y3) & 0xFu;
}

// One NVFP4 block (16 bf16/fp16 values in two 16-byte halves, in k order) with global scale gs ->
// its 8 code bytes (value 2i in the low nibble of byte i, as the quantizer packs them) and its
// E4M3 scale byte. A block holding NaN/Inf, or a non-finite gs, gets 0x7F and zero codes.
template <int ACT>
__device__ __forceinline__ uint32_t quantize_nv_block(const uint4 (&x)[2], float gs, bool gs_bad, uint2& codes) {
    const uint32_t w[8] = {x[0].x, x[0].y, x[0].z, x[0].w, x[1].x, x[1].y, x[1].z, x[1].w};
    constexpr uint32_t kInf = ACT == 3 ? 0x7F80u : 0x7C00u;
    uint32_t m2 = 0;
#pragma unroll
    for (int q = 0; q < 8; ++q) m2 = __vmaxu2(m2, w[q] & 0x7FFF7FFFu);
    const uint32_t am16 = max(m2 & 0xFFFFu, m2 >> 16);
    const float amax = act_to_float<ACT>(am16);
    float sf = amax > 0.0f ? __fdiv_rn(__fmul_rn(amax, gs), 6.0f) : 0.0f;
    sf = fminf(sf, 448.0f);
    uint32_t sbyte = e4m3_byte(sf);
    const float sv = e4m3_value(sbyte);
    const float mult = sv > 0.0f ? __fdiv_rn(gs, sv) : 0.0f;
    uint32_t out[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        uint32_t word = 0;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const uint32_t pr = w[4 * h + q];
            const uint32_t lo = e2m1_magnitude(__fmul_rn(act_to_float<ACT>(pr & 0xFFFFu), mult));
            const uint32_t hi = e2m1_magnitude(__fmul_rn(act_to_float<ACT>(pr >> 16), mult));
            const uint32_t byte = (hi << 4) | lo | ((pr >> 12) & 0x8u) | ((pr >> 24) & 0x80u);
            word |= byte << (8 * q);
        }
        out[h] = word;
    }
    if (am16 >= kInf || gs_bad) {
        out[0] = out[1] = 0;
        sbyte = 0x7Fu;
    }
    codes = make_uint2(out[0], out[1]);
    return sbyte;
}

// The quantizer's global scale of the whole (m, k) input, for every thread of the CTA:
// gs = 2688 / amax over the finite values (1 if none is nonzero). Reads m * k values (from L2:
// every CTA reads the same small input); ends with a CTA barrier.
template <int ACT>
__device__ float whole_input_gs(const uint8_t* a, int m, int k) {
    const uint4* v = reinterpret_cast<const uint4*>(a);
    const long long n16 = (long long)m * k / 8;  // 16-byte pieces (k % 64 == 0)
    const int stride = blockDim.x;
    uint32_t acc = 0;
    // Eight 16-byte loads in flight per thread before any use: a 16384-element input is one
    // round trip to L2 for a CTA of 8 warps, two for 4 (the latency is the cost, not the bytes).
    constexpr int kInFlight = 8;
    for (long long i = threadIdx.x; i < n16; i += (long long)kInFlight * stride) {
        uint4 x[kInFlight];
#pragma unroll
        for (int u = 0; u < kInFlight; ++u)
            x[u] = i + (long long)u * stride < n16 ? __ldcg(v + i + (long long)u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < kInFlight; ++u)
            acc = __vmaxu2(__vmaxu2(acc, finite_abs2<ACT>(x[u].x)), __vmaxu2(finite_abs2<ACT>(x[u].y),
                  __vmaxu2(finite_abs2<ACT>(x[u].z), finite_abs2<ACT>(x[u].w))));
    }
    acc = __reduce_max_sync(0xFFFFFFFFu, max(acc & 0xFFFFu, acc >> 16));
    __shared__ uint32_t warp_max[8];
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = acc;
    __syncthreads();
    uint32_t am = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) am = max(am, warp_max[w]);
    const float amax = act_to_float<ACT>(am);
    return amax > 0.0f ? __fmul_rn(__fdiv_rn(1.0f, amax), 2688.0f) : 1.0f;
}

template <bool MX, int T, int NT, int ACT = 0>
__device__ __forceinline__ void compute(const Stage<T, NT>& st, float (&acc)[T][NT][4], const Tables& tb,
                                        float gs = 1.0f, bool gs_bad = false) {
    static_assert(!(MX && ACT == 2), "MXFP4 weights take bf16 activations only");
    static_assert(!(MX && fused_quant(ACT)), "fused quantization is NVFP4 only");
    constexpr bool BF = kBf16Mma<MX, ACT>;
    uint32_t av[NT][8];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        if constexpr (fused_quant(ACT)) {
            // The same operands as the W4A4 path gets from the quantizer's bytes.
            uint2 codes;
            const uint32_t sbyte = quantize_nv_block<ACT>(st.a16[j], gs, gs_bad, codes);
            const uint32_t s = bcast(scales2<false>(sbyte), true);
            uint32_t r[4];
            decode_word<false>(codes.x, r, tb);
#pragma unroll
            for (int q = 0; q < 4; ++q) av[j][q] = mul2<false>(r[q], s);
            decode_word<false>(codes.y, r, tb);
#pragma unroll
            for (int q = 0; q < 4; ++q) av[j][4 + q] = mul2<false>(r[q], s);
        } else if constexpr (ACT > 0) {
            av[j][0] = st.a16[j][0].x; av[j][1] = st.a16[j][0].y; av[j][2] = st.a16[j][0].z; av[j][3] = st.a16[j][0].w;
            av[j][4] = st.a16[j][1].x; av[j][5] = st.a16[j][1].y; av[j][6] = st.a16[j][1].z; av[j][7] = st.a16[j][1].w;
        } else {
            uint32_t r[4];
            // st.asf[j] is the scale byte, or 0x100 for a row past M: its value is forced to 0.
            const uint32_t s = st.asf[j] > 0xFFu ? 0u : bcast(scales2<MX>(st.asf[j]), true);
            decode_word<MX>(st.a[j].x, r, tb);
#pragma unroll
            for (int q = 0; q < 4; ++q) av[j][q] = mul2<MX>(r[q], s);
            decode_word<MX>(st.a[j].y, r, tb);
#pragma unroll
            for (int q = 0; q < 4; ++q) av[j][4 + q] = mul2<MX>(r[q], s);
        }
    }
#pragma unroll
    for (int i = 0; i < T; ++i) {
        uint32_t lo[8], hi[8];  // rows g and g+8, 16 values each
        uint32_t r[4];
        const uint32_t both = weight_scales2<MX, BF>(st.wsf[i]);
        decode_weight_as<MX, BF, ACT>(st.w[i].x, r, tb);
#pragma unroll
        for (int q = 0; q < 4; ++q) lo[q] = mul2_by_half<BF, true>(r[q], both);
        decode_weight_as<MX, BF, ACT>(st.w[i].y, r, tb);
#pragma unroll
        for (int q = 0; q < 4; ++q) lo[4 + q] = mul2_by_half<BF, true>(r[q], both);
        decode_weight_as<MX, BF, ACT>(st.w[i].z, r, tb);
#pragma unroll
        for (int q = 0; q < 4; ++q) hi[q] = mul2_by_half<BF, false>(r[q], both);
        decode_weight_as<MX, BF, ACT>(st.w[i].w, r, tb);
#pragma unroll
        for (int q = 0; q < 4; ++q) hi[4 + q] = mul2_by_half<BF, false>(r[q], both);
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            // A fragment: {row g, slots 2t..}, {row g+8, 2t..}, {row g, 2t+8..}, {row g+8, 2t+8..};
            // slot pair 2t.. is value register 2s of the lane's 16 k's, 2t+8.. is 2s+1.
            const uint32_t afrag[4] = {lo[2 * s], hi[2 * s], lo[2 * s + 1], hi[2 * s + 1]};
#pragma unroll
            for (int j = 0; j < NT; ++j) mma<BF>(acc[i][j], afrag, av[j][2 * s], av[j][2 * s + 1]);
        }
    }
}

// Register budget: 128 per thread (2 CTAs of 8 warps, 16 warps per SM) wherever the kernel
// fits in it without spilling (sm_90a, ptxas 13.0): every ring variant up to 8 tile pairs per
// chunk except MXFP4 with 8 activation tiles. Left to itself, ptxas gave the t = 4 kernel with
// 2 activation tiles 218 registers, which leaves room for only 8 warps per SM.
template <bool MX, int T, int NT, int RING>
constexpr int min_ctas_8_warps() {
    return (T * NT <= 2 || (RING > 0 && (T * NT <= 4 || (T * NT <= 8 && !(MX && NT == 8))))) ? 2 : 1;
}

template <bool MX, int T, int NT, int STAGES, int RING, int ACT = 0>
__global__ void __launch_bounds__(256, (min_ctas_8_warps<MX, T, NT, RING>()))
fp4_splitk_kernel(const Fp4SplitKParams p) {
    static_assert(ACT == 0 || RING > 0, "plain activations run through the shared-memory ring only");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int chunks = p.k >> 6;
    const int c_begin = (int)((long long)chunks * blockIdx.y / p.splits);
    const int c_end = (int)((long long)chunks * (blockIdx.y + 1) / p.splits);
    const int tile0 = (blockIdx.x * p.warps + warp) * T;
    const int m0 = blockIdx.z * (8 * NT);

    const uint4* wp[T];
    const uint16_t* sp[T];
    bool wvalid[T];
#pragma unroll
    for (int i = 0; i < T; ++i) {
        const int tile = tile0 + i;
        wvalid[i] = tile < p.m_tiles;  // warp-uniform
        const size_t blk = piece_of(wvalid[i] ? tile : 0, 0, chunks);
        wp[i] = reinterpret_cast<const uint4*>(p.b) + blk * 32 + lane;
        sp[i] = reinterpret_cast<const uint16_t*>(p.b_sf) + blk * (MX ? 16 : 32) + (MX ? lane >> 1 : lane);
    }
    const uint2* ap[NT];
    int sf_base[NT];
    bool avalid[NT];
    const int tile_bytes = p.a_sf_8x4 ? 32 : 512;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const int m = m0 + 8 * j + g;
        avalid[j] = m < p.m;
        const int mm = avalid[j] ? m : 0;
        ap[j] = reinterpret_cast<const uint2*>(p.a + (size_t)mm * (p.k >> 1)) + t;
        const int row_base = p.a_sf_8x4
            ? (mm >> 3) * p.a_sf_col_tiles * 32 + (mm & 7) * 4
            : (mm >> 7) * p.a_sf_col_tiles * 512 + (mm & 31) * 16 + ((mm >> 5) & 3) * 4;
        sf_base[j] = row_base + (MX ? (t >> 1) : t);
    }

    // W4A16: row m's 32 bytes of chunk c start at byte 2 (64 c + 16 t) of the row.
    const uint8_t* a16p[NT];
    bool a16_valid[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const int m = m0 + 8 * j + g;
        a16_valid[j] = m < p.m;
        a16p[j] = p.a + (size_t)(m < p.m ? m : 0) * p.k * 2 + t * 32 + (size_t)c_begin * 128;
    }

    // Loads are unconditional: a weight tile past N reads tile 0 (never stored), an
    // activation row past M reads row 0 with its scale replaced by zero (0x100 marker).
    // Chunks are loaded in increasing order, once each, so the addresses just advance.
#pragma unroll
    for (int i = 0; i < T; ++i) {
        wp[i] += (size_t)c_begin * kTileGroup * 32;
        sp[i] += (size_t)c_begin * kTileGroup * (MX ? 16 : 32);
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) ap[j] += (size_t)c_begin * 4;
    // A's scale offset for chunk c: NVFP4 block 4c + t -> c * tile; MXFP4 block 2c + t/2 ->
    // (c/2) * tile + 2 (c % 2). Tracked as (c/2 or c) * tile plus the parity part.
    int sf_off = MX ? (c_begin >> 1) * tile_bytes + ((c_begin & 1) << 1) : c_begin * tile_bytes;
    const Tables tb = Tables::make<MX>(p.m);
    auto load = [&](Stage<T, NT>& st, int c) {
#pragma unroll
        for (int i = 0; i < T; ++i) {
            st.w[i] = ld_stream(wp[i]);
            st.wsf[i] = ld_u16(sp[i]);
            wp[i] += kTileGroup * 32;
            sp[i] += kTileGroup * (MX ? 16 : 32);
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            st.a[j] = __ldg(ap[j]);
            ap[j] += 4;
            st.asf[j] = avalid[j] ? (uint32_t)__ldg(p.a_sf + sf_base[j] + sf_off) : 0x100u;
        }
        sf_off += MX ? ((c & 1) ? tile_bytes - 2 : 2) : tile_bytes;
    };

    float acc[T][NT][4];
#pragma unroll
    for (int i = 0; i < T; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

    float gs = 1.0f;  // fused quantization: the activations' global scale (whole_input_gs)
    if constexpr (RING > 0) {
        // Shared-memory ring of RING chunks per warp, filled with cp.async: RING - 1 chunks are
        // in flight per lane without holding registers (the register pipeline below needs
        // STAGES x (16 T + ...) registers for the same), so more warps fit per SM and more
        // bytes are in flight. No CTA barrier: each warp owns its slots.
        using R = RingSlot<MX, T, NT, ACT>;
        extern __shared__ __align__(16) uint8_t ring_smem[];
        uint8_t* const ring = ring_smem + (size_t)warp * RING * R::kBytes;
        const uint8_t* sfb[T];  // the chunk's first scale byte of each tile
#pragma unroll
        for (int i = 0; i < T; ++i)
            sfb[i] = reinterpret_cast<const uint8_t*>(sp[i] - (MX ? lane >> 1 : lane));
        constexpr int kSfLanes = R::kWsf / 16;
        // The weight's part of a chunk.
        auto issue_w = [&](uint8_t* slot) {
#pragma unroll
            for (int i = 0; i < T; ++i) {
                cp_async16(slot + R::kW + i * 512 + lane * 16, wp[i]);
                if (lane < kSfLanes) cp_async16(slot + R::kWs + i * R::kWsf + lane * 16, sfb[i] + lane * 16);
                wp[i] += kTileGroup * 32;
                sfb[i] += kTileGroup * R::kWsf;
            }
        };
        // The activations' part (after pdl_wait).
        auto issue_a = [&](uint8_t* slot, int c) {
            if constexpr (ACT > 0) {
                // Rows past M are zero-filled without reading (at M = 1, 7 of a warp's 8 rows).
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    const int bytes = a16_valid[j] ? 16 : 0;
                    cp_async16_zfill(slot + R::kA + j * 1024 + lane * 16, a16p[j], bytes);
                    cp_async16_zfill(slot + R::kA + j * 1024 + 512 + lane * 16, a16p[j] + 16, bytes);
                    a16p[j] += 128;
                }
            } else {
                const int sub = MX ? (t >> 1) + ((c & 1) << 1) : t;  // the byte in its 4-byte group
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    cp_async_small<8>(slot + R::kA + j * 256 + lane * 8, ap[j]);
                    cp_async_small<4>(slot + R::kAs + j * 128 + lane * 4, p.a_sf + sf_base[j] + sf_off - sub);
                    ap[j] += 4;
                }
                sf_off += MX ? ((c & 1) ? tile_bytes - 2 : 2) : tile_bytes;
            }
        };
        auto issue = [&](uint8_t* slot, int c) {
            issue_w(slot);
            issue_a(slot, c);
        };
        auto read = [&](const uint8_t* slot, int c, Stage<T, NT>& st) {
#pragma unroll
            for (int i = 0; i < T; ++i) {
                st.w[i] = *reinterpret_cast<const uint4*>(slot + R::kW + i * 512 + lane * 16);
                st.wsf[i] = *reinterpret_cast<const uint16_t*>(slot + R::kWs + i * R::kWsf + (MX ? lane >> 1 : lane) * 2);
            }
            if constexpr (ACT > 0) {
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    st.a16[j][0] = *reinterpret_cast<const uint4*>(slot + R::kA + j * 1024 + lane * 16);
                    st.a16[j][1] = *reinterpret_cast<const uint4*>(slot + R::kA + j * 1024 + 512 + lane * 16);
                }
            } else {
                const int sub = MX ? (t >> 1) + ((c & 1) << 1) : t;
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    st.a[j] = *reinterpret_cast<const uint2*>(slot + R::kA + j * 256 + lane * 8);
                    st.asf[j] = avalid[j] ? (uint32_t)slot[R::kAs + j * 128 + lane * 4 + sub] : 0x100u;
                }
            }
        };
        // PDL: while the kernel ahead drains, pull the first RING - 1 weight chunks into L2 only.
        // A prefetch returns no data, so it cannot see a weight that kernel is still writing (a
        // prepare right before this launch); the copies into the ring come after the wait.
        if (p.pdl) {
#pragma unroll
            for (int s = 0; s < RING - 1; ++s) {
                if (c_begin + s < c_end) {
#pragma unroll
                    for (int i = 0; i < T; ++i) {
                        prefetch_l2(wp[i] + (size_t)s * kTileGroup * 32);
                        if (lane < kSfLanes) prefetch_l2(sfb[i] + (size_t)s * kTileGroup * R::kWsf + lane * 16);
                    }
                }
            }
        }
        fp4core::pdl_wait();
        fp4core::pdl_launch_dependents();
#pragma unroll
        for (int s = 0; s < RING - 1; ++s) {
            if (c_begin + s < c_end) issue(ring + s * R::kBytes, c_begin + s);
            cp_async_commit();  // one group per chunk, empty past the end: the wait count stays fixed
        }
        // While those copies fly, the whole input's maximum (the raw copies need no scale).
        if constexpr (fused_quant(ACT)) gs = p.a_gs ? __ldg(p.a_gs) : whole_input_gs<ACT>(p.a, p.m, p.k);
        const bool gs_bad = !(fabsf(gs) < INFINITY);
        int slot = 0;
        for (int c = c_begin; c < c_end; ++c) {
            cp_async_wait<RING - 2>();  // this lane's copies of chunk c have landed
            __syncwarp();               // ... and every lane's (the scales), and chunk c-1 is read
            const int refill = slot == 0 ? RING - 1 : slot - 1;  // chunk c-1's slot
            if (c + RING - 1 < c_end) issue(ring + refill * R::kBytes, c + RING - 1);
            cp_async_commit();
            Stage<T, NT> st;
            read(ring + slot * R::kBytes, c, st);
            compute<MX, T, NT, ACT>(st, acc, tb, gs, gs_bad);
            slot = slot == RING - 1 ? 0 : slot + 1;
        }
    } else if constexpr (ACT == 0) {
        // Register pipeline: STAGES chunks in flight per lane; a stage is refilled with the
        // chunk STAGES ahead right after it is consumed (the other STAGES-1 loads cover the
        // latency).
        Stage<T, NT> stages[STAGES];
        fp4core::pdl_wait();
        fp4core::pdl_launch_dependents();
#pragma unroll
        for (int s = 0; s < STAGES; ++s)
            if (c_begin + s < c_end) load(stages[s], c_begin + s);
        for (int c = c_begin; c < c_end; c += STAGES) {
#pragma unroll
            for (int s = 0; s < STAGES; ++s) {
                if (c + s < c_end) {
                    compute<MX, T, NT>(stages[s], acc, tb);
                    if (c + s + STAGES < c_end) load(stages[s], c + s + STAGES);
                }
            }
        }
    }

    // NVFP4 weight operands are value * 2^-14 (decode_nv_weight), or value * scale * 2^-7 on the
    // bf16 path (decode_nv_weight_bf16, scales2_nv_bf16): alpha carries 2^14 or 2^7, exactly.
    // Fused dynamic quantization: alpha = 1 / (gs * w_gs), the quantizer's expression.
    const float alpha_in = fused_quant(ACT) && !p.a_gs ? __fdiv_rn(1.0f, __fmul_rn(gs, __ldg(p.w_gs)))
                                                       : (p.alpha ? __ldg(p.alpha) : 1.0f);
    const float alpha = alpha_in * ((!MX && kBf16Mma<MX, ACT>) ? kNvBf16WeightScale : weight_scale<MX>());
    auto store = [&](float (&v)[T][NT][4]) {
#pragma unroll
        for (int i = 0; i < T; ++i) {
            if (!wvalid[i]) continue;
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int n = (tile0 + i) * 16 + g + ((r & 2) ? 8 : 0);
                    const int m = m0 + 8 * j + 2 * t + (r & 1);
                    if (n < p.n && m < p.m) {
                        const float x = v[i][j][r] * alpha;
                        const size_t idx = (size_t)m * p.n + n;
                        if (p.out_fp16) reinterpret_cast<__half*>(p.out)[idx] = __float2half_rn(x);
                        else reinterpret_cast<__nv_bfloat16*>(p.out)[idx] = __float2bfloat16_rn(x);
                    }
                }
        }
    };

    if (p.splits == 1) {
        store(acc);
        return;
    }
    // Split-K: partials in fragment order, so every lane writes and reads float4s.
    const int tile_id = blockIdx.z * gridDim.x + blockIdx.x;
    const size_t frag = (size_t)T * NT * 32;
    float4* ws = reinterpret_cast<float4*>(p.ws);
    const size_t base = ((size_t)tile_id * p.splits * p.warps + warp) * frag + lane;
    const size_t split_stride = (size_t)p.warps * frag;
#pragma unroll
    for (int i = 0; i < T; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
            __stcg(ws + base + blockIdx.y * split_stride + (i * NT + j) * 32,
                   make_float4(acc[i][j][0], acc[i][j][1], acc[i][j][2], acc[i][j][3]));
    __threadfence();
    __syncthreads();
    __shared__ int is_last;
    if (threadIdx.x == 0) is_last = atomicAdd(p.counters + tile_id, 1) == p.splits - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    float sum[T][NT][4];
#pragma unroll
    for (int i = 0; i < T; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) sum[i][j][r] = 0.f;
    // Fixed order s = 0, 1, ... (deterministic), with the loads of 4 splits issued before
    // their adds so the reduction costs a few L2 round trips instead of one per split.
    constexpr int R = 4;
    for (int s0 = 0; s0 < p.splits; s0 += R) {
        float4 v[R][T][NT];
#pragma unroll
        for (int u = 0; u < R; ++u)
#pragma unroll
            for (int i = 0; i < T; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j)
                    v[u][i][j] = s0 + u < p.splits
                        ? __ldcg(ws + base + (s0 + u) * split_stride + (i * NT + j) * 32)
                        : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int u = 0; u < R; ++u)
#pragma unroll
            for (int i = 0; i < T; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    // Adding the +0 of a missing split leaves every sum bit-identical.
                    sum[i][j][0] += v[u][i][j].x; sum[i][j][1] += v[u][i][j].y;
                    sum[i][j][2] += v[u][i][j].z; sum[i][j][3] += v[u][i][j].w;
                }
    }
    store(sum);
    if (threadIdx.x == 0) p.counters[tile_id] = 0;  // every CTA of this tile has arrived
}

// Chunks per warp in the shared-memory ring of the "ring" tactics: 5 for 4 tiles per warp
// (4 CTAs of 4 warps then fit in 228 KiB, as many as its 124 registers allow), else 6.
constexpr int ring_chunks(int T) { return T >= 4 ? 5 : 6; }

template <bool MX, int T, int NT, int RING, int ACT = 0>
cudaError_t launch(const Fp4SplitKParams& p, cudaStream_t stream) {
    // Fewer chunks in flight where the tile needs more registers.
    constexpr int STAGES = (T * NT <= 4) ? 3 : 2;
    dim3 grid((p.m_tiles + p.warps * T - 1) / (p.warps * T), p.splits, (p.m + 8 * NT - 1) / (8 * NT));
    const unsigned smem = RING ? (unsigned)(p.warps * RING * RingSlot<MX, T, NT, ACT>::kBytes) : 0u;
    if (RING) {
        // Past 48 KiB a kernel must opt in, per device: once per device, for the largest warp
        // count's need or the device's limit if less (a benign race: every thread sets the
        // same values). All of the unified L1/shared storage goes to shared memory: the
        // streamed bytes skip L1.
        static int opted_in[64] = {};
        int dev = 0, limit = 0;
        cudaGetDevice(&dev);
        if (dev >= 64 || opted_in[dev] == 0) {
            // The dynamic limit is the block opt-in size less the kernel's static shared memory.
            auto* fn = fp4_splitk_kernel<MX, T, NT, STAGES, RING, ACT>;
            cudaFuncAttributes fa{};
            cudaError_t e = cudaFuncGetAttributes(&fa, fn);
            if (e == cudaSuccess) e = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
            const int want = 8 * RING * RingSlot<MX, T, NT, ACT>::kBytes;
            limit -= (int)fa.sharedSizeBytes;
            if (limit > want || limit <= 0) limit = want;
            if (e == cudaSuccess) e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, limit);
            if (e == cudaSuccess)
                e = cudaFuncSetAttribute(fn, cudaFuncAttributePreferredSharedMemoryCarveout, 100);
            if (e != cudaSuccess) {
                cudaGetLastError();  // clear it: a later launch's cudaGetLastError must not report it
                return e;
            }
            if (dev < 64) opted_in[dev] = limit;
        } else {
            limit = opted_in[dev];
        }
        // W4A16 slots are larger: a CTA of many warps may not fit (the plugin offers none such).
        if ((int)smem > limit) return cudaErrorInvalidConfiguration;
    }
    return fp4core::launch_pdl(fp4_splitk_kernel<MX, T, NT, STAGES, RING, ACT>, grid, dim3(32 * p.warps), smem,
                               stream, p.pdl != 0, 1u, p);
}

template <bool MX, int T, bool RING>
cudaError_t dispatch_nt(const Fp4SplitKParams& p, int nt, cudaStream_t s) {
    constexpr int R = RING ? ring_chunks(T) : 0;
    switch (nt) {
        case 1: return launch<MX, T, 1, R>(p, s);
        case 2: return launch<MX, T, 2, R>(p, s);
        case 4: return launch<MX, T, 4, R>(p, s);
        case 8: if (T <= 2) return launch<MX, (T <= 2 ? T : 2), 8, RING ? ring_chunks(2) : 0>(p, s); break;
    }
    return cudaErrorInvalidValue;
}

template <bool MX, bool RING>
cudaError_t dispatch_t(const Fp4SplitKParams& p, int t, int nt, cudaStream_t s) {
    switch (t) {
        case 1: return dispatch_nt<MX, 1, RING>(p, nt, s);
        case 2: return dispatch_nt<MX, 2, RING>(p, nt, s);
        case 4: return dispatch_nt<MX, 4, RING>(p, nt, s);
    }
    return cudaErrorInvalidValue;
}

template <bool MX>
cudaError_t dispatch_ring(const Fp4SplitKParams& p, int t, int nt, int ring, cudaStream_t s) {
    return ring ? dispatch_t<MX, true>(p, t, nt, s) : dispatch_t<MX, false>(p, t, nt, s);
}

// W4A16 (ring only): (t, nt) as the W4A4 ring kernels, nt = 8 only with t <= 2.
template <bool MX, int ACT, int T>
cudaError_t plain_act_nt(const Fp4SplitKParams& p, int nt, cudaStream_t s) {
    switch (nt) {
        case 1: return launch<MX, T, 1, ring_chunks(T), ACT>(p, s);
        case 2: return launch<MX, T, 2, ring_chunks(T), ACT>(p, s);
        case 4: return launch<MX, T, 4, ring_chunks(T), ACT>(p, s);
        case 8: if (T <= 2) return launch<MX, (T <= 2 ? T : 2), 8, ring_chunks(2), ACT>(p, s); break;
    }
    return cudaErrorInvalidValue;
}

template <bool MX, int ACT>
cudaError_t plain_act_t(const Fp4SplitKParams& p, int t, int nt, cudaStream_t s) {
    switch (t) {
        case 1: return plain_act_nt<MX, ACT, 1>(p, nt, s);
        case 2: return plain_act_nt<MX, ACT, 2>(p, nt, s);
        case 4: return plain_act_nt<MX, ACT, 4>(p, nt, s);
    }
    return cudaErrorInvalidValue;
}

// Fused quantization (NVFP4, ring only): nt <= 4 (the 8-tile variant would spill).
template <int ACT, int T>
cudaError_t fused_quant_nt(const Fp4SplitKParams& p, int nt, cudaStream_t s) {
    switch (nt) {
        case 1: return launch<false, T, 1, ring_chunks(T), ACT>(p, s);
        case 2: return launch<false, T, 2, ring_chunks(T), ACT>(p, s);
        case 4: return launch<false, T, 4, ring_chunks(T), ACT>(p, s);
    }
    return cudaErrorInvalidValue;
}

template <int ACT>
cudaError_t fused_quant_t(const Fp4SplitKParams& p, int t, int nt, cudaStream_t s) {
    switch (t) {
        case 1: return fused_quant_nt<ACT, 1>(p, nt, s);
        case 2: return fused_quant_nt<ACT, 2>(p, nt, s);
        case 4: return fused_quant_nt<ACT, 4>(p, nt, s);
    }
    return cudaErrorInvalidValue;
}

}  // namespace

extern "C" {

// Launch on `stream`. mx: 0 NVFP4, 1 MXFP4; t: weight tiles (16 rows) per warp, 1/2/4;
// nt: activation tiles (8 rows) per CTA, 1/2/4/8 (8 only with t <= 2); ring: 0 = register
// pipeline, 1 = shared-memory cp.async ring (needs a_sf 4-byte aligned). Returns a
// cudaError_t (0 = launched).
int fp4_trtllm_splitk(const Fp4SplitKParams* p, int mx, int t, int nt, int ring, void* stream) {
    if (p->warps < 1 || p->warps > 8 || p->splits < 1 || (p->k & 63) || p->m < 1 || p->n < 1)
        return (int)cudaErrorInvalidValue;
    if (ring && (reinterpret_cast<uintptr_t>(p->a_sf) & 3))
        return (int)cudaErrorMisalignedAddress;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return (int)(mx ? dispatch_ring<true>(*p, t, nt, ring, s) : dispatch_ring<false>(*p, t, nt, ring, s));
}

// NVFP4 quantization of the activations + GEMM on `stream`: a is the plain (M, K) row-major
// activation, 16-byte aligned; act: 3 bf16, 4 fp16; static: p->a_gs the activations' global
// scale and p->alpha the GEMM's alpha; dynamic (p->a_gs null): p->w_gs the weight's global
// scale. p->a_sf unused; the weight prepared as for fp4_trtllm_splitk (NVFP4); t, nt (<= 4) as
// there; always the ring. Returns a cudaError_t (0 = launched).
int fp4_trtllm_splitk_fused_quant(const Fp4SplitKParams* p, int act, int t, int nt, void* stream) {
    if (p->warps < 1 || p->warps > 8 || p->splits < 1 || (p->k & 63) || p->m < 1 || p->n < 1 ||
        (act != 3 && act != 4) || (p->a_gs == nullptr && p->w_gs == nullptr))
        return (int)cudaErrorInvalidValue;
    if (reinterpret_cast<uintptr_t>(p->a) & 15) return (int)cudaErrorMisalignedAddress;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return (int)(act == 3 ? fused_quant_t<3>(*p, t, nt, s) : fused_quant_t<4>(*p, t, nt, s));
}

// Weight-only (W4A16) launch on `stream`: a is (M, K) row-major, 16-byte aligned; act: 1 bf16,
// 2 fp16 (NVFP4 weights only); mx, t, nt as fp4_trtllm_splitk; always the shared-memory ring.
// Returns a cudaError_t (0 = launched).
int fp4_trtllm_splitk_w16(const Fp4SplitKParams* p, int mx, int act, int t, int nt, void* stream) {
    if (p->warps < 1 || p->warps > 8 || p->splits < 1 || (p->k & 63) || p->m < 1 || p->n < 1 ||
        (act != 1 && act != 2) || (mx && act != 1))
        return (int)cudaErrorInvalidValue;
    if (reinterpret_cast<uintptr_t>(p->a) & 15) return (int)cudaErrorMisalignedAddress;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    if (mx) return (int)plain_act_t<true, 1>(*p, t, nt, s);
    return (int)(act == 1 ? plain_act_t<false, 1>(*p, t, nt, s) : plain_act_t<false, 2>(*p, t, nt, s));
}
}
