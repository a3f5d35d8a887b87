// fp4-trtllm: swap-AB streaming GEMM for small M (decode), NVFP4 and MXFP4, SM80+.
//
// out (M, N) = alpha * dequant(A) (M, K) @ dequant(B)^T, B = the weight (N, K).
//
// Swap-AB: the weight's N rows are the M side of mma.sync m16n8k16 (16 weight rows per
// MMA), the activations' M rows are its N side (8 per MMA). Each warp owns T tiles of 16
// weight rows and walks K in chunks of 64; every lane holds, per tile and chunk, 16 FP4
// values of row g and 16 of row g+8 (g = lane / 4) over the same 16 k's, which is exactly
// one 16-byte piece of the layout prepare() makes (see fp4_trtllm/layout.py). The k's inside
// one MMA are a permutation we choose freely as long as A and B use the same one: lane t
// (= lane % 4) covers k = 16t..16t+15 of the chunk in 4 MMA steps.
//
// Dequantization is exact in registers: E2M1 codes go through a byte-permute lookup table
// (prmt) to fp16 (NVFP4) or bf16 (MXFP4) bit patterns and are multiplied by the block scale
// (E4M3 -> fp16 or E8M0 -> bf16, both exact for every product code * scale). NVFP4 uses
// fp16 MMAs because E2M1 x E4M3 is exact in fp16 and fp16 needs no low byte in the table;
// MXFP4 needs bf16's exponent range. Accumulation is fp32.
//
// Work split (persistent stream-K): a CTA of W warps owns "groups" of W*T tiles; the work is
// the list of units (activation block mb, group, 64-wide K chunk), K fastest, cut into
// gridDim.x equal contiguous ranges, one per CTA (grid = a few CTAs per SM), so every CTA
// streams about the same number of bytes whatever N and K are. A group whose K range is
// split between CTAs is finished by a deterministic fixup: each CTA writes its fp32 partial
// to a workspace slot, and the last to arrive (an integer counter per group, reset by that
// CTA) sums the partials in CTA order, so results are bit-identical run to run.
//
// Memory pipeline: every thread copies the bytes it (or its warp / CTA) will consume with
// cp.async into a ring of STAGES shared-memory stages of D units each, so STAGES-1 stages
// are in flight per CTA without costing registers. Activations: per unit, one warp decodes
// each 8-row activation tile once into shared memory as ready-made fp16/bf16 MMA
// B-fragments, which every warp of the CTA then reads (instead of each warp decoding its
// own copy).
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
// Must match fp4_trtllm/launcher.py (_Params).
struct Fp4GemvParams {
    const uint8_t* a;      // (M, K/2) packed E2M1, row-major
    const uint8_t* a_sf;   // A's scale bytes, 128x4 or 8x4 layout
    const uint8_t* b;      // prepared weight: [tile group][chunk][tile][lane][16 B]
    const uint8_t* b_sf;   // prepared scales: [tile group][chunk][tile][64 B (NVFP4) or 32 B (MXFP4)]
    const float* alpha;    // one float, or null for 1
    void* out;             // (M, N) bf16 or fp16, row-major
    float* ws;             // stream-K partials: [gridDim.x][2][warps][T*NT*32] float4
    int* counters;         // per (mb, group) arrival counters, zero between launches
    int m, n, k;
    int a_sf_8x4;          // A scale layout: 0 = 128x4, 1 = 8x4
    int a_sf_col_tiles;    // padded scale columns / 4
    int out_fp16;          // 0 = bf16 output, 1 = fp16
    int warps;             // warps per CTA (W)
    int m_tiles;           // ceil(N / 16): tiles of weight rows
    int groups;            // ceil(m_tiles / (W * T))
    int mblocks;           // ceil(M / (8 * NT))
    int pdl;               // host side: launch with programmatic dependent launch (SM90+)
};
}

#include "fp4_decode.cuh"
#include "fp4core/pdl.cuh"

namespace {

// ---- cp.async (SM80+): global -> shared without registers ----------------------------------
__device__ __forceinline__ void cp16(uint32_t dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp8(uint32_t dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp4(uint32_t dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

__device__ __forceinline__ uint4 lds128(uint32_t a) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(a));
    return v;
}
__device__ __forceinline__ uint2 lds64(uint32_t a) {
    uint2 v;
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(a));
    return v;
}
__device__ __forceinline__ uint32_t lds32(uint32_t a) {
    uint32_t v;
    asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(a));
    return v;
}
__device__ __forceinline__ uint32_t lds16(uint32_t a) {
    unsigned short v;
    asm volatile("ld.shared.u16 %0, [%1];" : "=h"(v) : "r"(a));
    return v;
}
__device__ __forceinline__ void sts128(uint32_t a, uint4 v) {
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(a), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w));
}

// Units (64-wide K chunks) per pipeline stage, and stages in the ring.
constexpr int D = 2;
constexpr int STAGES = 3;

// Shared-memory layout of one CTA (bytes), W warps. Per stage: weights [D][W][T][512],
// weight scales [D][W][T][64], raw activation bytes [D][NT][32 lanes][8], raw activation
// scale words [D][NT][32][4]; then two buffers of decoded activation fragments
// [D][NT][2 halves][32 lanes][16 B].
template <int T, int NT>
struct Smem {
    uint32_t w_st, s_st, ar_st, as_st, af_buf, off_s, off_ar, off_as, off_af, total;
    __host__ __device__ static Smem make(int W) {
        Smem s;
        s.w_st = D * W * T * 512;
        s.s_st = D * W * T * 64;
        s.ar_st = D * NT * 32 * 8;
        s.as_st = D * NT * 32 * 4;
        s.af_buf = D * NT * 1024;
        s.off_s = STAGES * s.w_st;
        s.off_ar = s.off_s + STAGES * s.s_st;
        s.off_as = s.off_ar + STAGES * s.ar_st;
        s.off_af = s.off_as + STAGES * s.as_st;
        s.total = s.off_af + 2 * s.af_buf;
        return s;
    }
};

// A cursor over units u = (mb * G + gi) * C + c, advanced one unit at a time (no divisions
// on the way).
struct Cursor {
    int mb, gi, c;
    __device__ __forceinline__ static Cursor at(int u, int C, int G) {
        const int x = u / C;
        return Cursor{x / G, x % G, u % C};
    }
    __device__ __forceinline__ void next(int C, int G) {
        if (++c == C) {
            c = 0;
            if (++gi == G) { gi = 0; ++mb; }
        }
    }
    __device__ __forceinline__ int x(int G) const { return mb * G + gi; }
};

// Small tiles (T * NT <= 4) are capped at 128 registers so 16 warps fit on an SM: the loop
// is latency-bound (ncu on H100: ~2 warps per scheduler at 173 registers, 4.3 cycles per
// issued instruction), so more warps beat more per-warp unrolling.
template <bool MX, int T, int NT>
__global__ void __launch_bounds__(256, (T * NT <= 4) ? 2 : 1) fp4_sk_kernel(const Fp4GemvParams p) {
    extern __shared__ __align__(16) uint8_t smem[];
    const int W = p.warps;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int C = p.k >> 6;
    const int G = p.groups;
    const long long U = (long long)p.mblocks * G * C;
    const int P = gridDim.x;
    const int u_begin = (int)(U * blockIdx.x / P), u_end = (int)(U * (blockIdx.x + 1) / P);
    if (u_begin >= u_end) return;  // never: the launcher keeps gridDim.x <= U
    const Smem<T, NT> L = Smem<T, NT>::make(W);
    const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(smem);
    constexpr int SFB = MX ? 32 : 64;   // weight scale bytes per (tile, chunk)
    constexpr int SPL = SFB / 16;       // 16-byte pieces of them
    const int tile_bytes = p.a_sf_8x4 ? 32 : 512;
    const size_t a_row = (size_t)(p.k >> 1);

    // A's scale word (4 bytes: blocks 4c..4c+3 for NVFP4, 4(c/2).. for MXFP4) of row m, chunk c.
    auto a_sf_off = [&](int m, int c) -> size_t {
        const size_t row_base = p.a_sf_8x4
            ? (size_t)(m >> 3) * p.a_sf_col_tiles * 32 + (m & 7) * 4
            : (size_t)(m >> 7) * p.a_sf_col_tiles * 512 + (m & 31) * 16 + ((m >> 5) & 3) * 4;
        return row_base + (size_t)(MX ? (c >> 1) : c) * tile_bytes;
    };

    // Activation tiles (d, j) of a stage are decoded by warp (d * NT + j) % W: this warp's set.
    uint32_t mine_a = 0;
#pragma unroll
    for (int e = 0; e < D * NT; ++e)
        if (e % W == warp) mine_a |= 1u << e;

    // Issue the copies of stage k (units u_begin + k*D ...) into ring slot k % STAGES.
    Cursor ic = Cursor::at(u_begin, C, G);
    int issued = u_begin;
    auto issue = [&](int k) {
        const int slot = k % STAGES;
#pragma unroll
        for (int d = 0; d < D; ++d) {
            if (issued < u_end) {
                const int mb = ic.mb, gi = ic.gi, c = ic.c;
                const uint32_t wdst = sbase + slot * L.w_st + ((d * W + warp) * T) * 512 + lane * 16;
#pragma unroll
                for (int i = 0; i < T; ++i) {
                    const int tile = (gi * W + warp) * T + i;
                    if (tile < p.m_tiles)
                        cp16(wdst + i * 512, p.b + piece_of(tile, c, C) * 512 + lane * 16);
                }
                if (lane < T * SPL) {
                    const int i = lane / SPL, piece = lane % SPL;
                    const int tile = (gi * W + warp) * T + i;
                    if (tile < p.m_tiles)
                        cp16(sbase + L.off_s + slot * L.s_st + ((d * W + warp) * T + i) * 64 + piece * 16,
                             p.b_sf + piece_of(tile, c, C) * SFB + piece * 16);
                }
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    if (!((mine_a >> (d * NT + j)) & 1u)) continue;
                    const int m = mb * 8 * NT + 8 * j + g;
                    if (m < p.m) {
                        const uint32_t e = (d * NT + j) * 32 + lane;
                        cp8(sbase + L.off_ar + slot * L.ar_st + e * 8, p.a + m * a_row + c * 32 + t * 8);
                        cp4(sbase + L.off_as + slot * L.as_st + e * 4, p.a_sf + a_sf_off(m, c));
                    }
                }
                ++issued;
                ic.next(C, G);
            }
        }
        cp_commit();
    };

    const Tables tb = Tables::make<MX>(p.m);

    // Decode the activation tiles of stage k owned by this warp into fragment buffer k & 1.
    Cursor dc = Cursor::at(u_begin, C, G);
    int decoded = u_begin;
    auto decode_a = [&](int k) {
        const int slot = k % STAGES, buf = k & 1;
#pragma unroll
        for (int d = 0; d < D; ++d) {
            if (decoded < u_end) {
                const int mb = dc.mb, c = dc.c;
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    if (!((mine_a >> (d * NT + j)) & 1u)) continue;
                    const int m = mb * 8 * NT + 8 * j + g;
                    uint4 lo = make_uint4(0, 0, 0, 0), hi = lo;
                    if (m < p.m) {
                        const uint32_t e = (d * NT + j) * 32 + lane;
                        const uint2 raw = lds64(sbase + L.off_ar + slot * L.ar_st + e * 8);
                        const uint32_t sw = lds32(sbase + L.off_as + slot * L.as_st + e * 4);
                        const int sb = MX ? 2 * (c & 1) + (t >> 1) : t;
                        const uint32_t s = bcast(scales2<MX>((sw >> (8 * sb)) & 0xFFu), true);
                        uint32_t r[4];
                        decode_word<MX>(raw.x, r, tb);
                        lo = make_uint4(mul2<MX>(r[0], s), mul2<MX>(r[1], s), mul2<MX>(r[2], s), mul2<MX>(r[3], s));
                        decode_word<MX>(raw.y, r, tb);
                        hi = make_uint4(mul2<MX>(r[0], s), mul2<MX>(r[1], s), mul2<MX>(r[2], s), mul2<MX>(r[3], s));
                    }
                    const uint32_t f = sbase + L.off_af + buf * L.af_buf + ((d * NT + j) * 2 * 32 + lane) * 16;
                    sts128(f, lo);
                    sts128(f + 32 * 16, hi);
                }
                ++decoded;
                dc.next(C, G);
            }
        }
    };

    float acc[T][NT][4];
    auto zero_acc = [&]() {
#pragma unroll
        for (int i = 0; i < T; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;
    };

    // One unit: this warp's T tiles times the CTA's NT activation tiles. The activation
    // fragments are loaded first and stay in registers; weight tiles are decoded one at a
    // time (16 registers), so T can grow without the registers growing with it.
    auto compute = [&](int slot, int buf, int d) {
        uint32_t av[NT][8];
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            const uint32_t f = sbase + L.off_af + buf * L.af_buf + ((d * NT + j) * 2 * 32 + lane) * 16;
            const uint4 b0 = lds128(f), b1 = lds128(f + 32 * 16);
            av[j][0] = b0.x; av[j][1] = b0.y; av[j][2] = b0.z; av[j][3] = b0.w;
            av[j][4] = b1.x; av[j][5] = b1.y; av[j][6] = b1.z; av[j][7] = b1.w;
        }
#pragma unroll
        for (int i = 0; i < T; ++i) {
            const int blk = (d * W + warp) * T + i;
            const uint4 w = lds128(sbase + slot * L.w_st + blk * 512 + lane * 16);
            const uint32_t sc = lds16(sbase + L.off_s + slot * L.s_st + blk * 64 + (MX ? (lane >> 1) : lane) * 2);
            const uint32_t both = scales2<MX>(sc);
            uint32_t lo[8], hi[8], r[4];  // rows g and g+8, 16 values each
            decode_weight<MX>(w.x, r, tb);
#pragma unroll
            for (int q = 0; q < 4; ++q) lo[q] = mul2_by_half<MX, true>(r[q], both);
            decode_weight<MX>(w.y, r, tb);
#pragma unroll
            for (int q = 0; q < 4; ++q) lo[4 + q] = mul2_by_half<MX, true>(r[q], both);
            decode_weight<MX>(w.z, r, tb);
#pragma unroll
            for (int q = 0; q < 4; ++q) hi[q] = mul2_by_half<MX, false>(r[q], both);
            decode_weight<MX>(w.w, r, tb);
#pragma unroll
            for (int q = 0; q < 4; ++q) hi[4 + q] = mul2_by_half<MX, false>(r[q], both);
#pragma unroll
            for (int s = 0; s < 4; ++s) {
                // A fragment: {row g, slots 2t..}, {row g+8, 2t..}, {row g, 2t+8..}, {row g+8, 2t+8..};
                // slot pair 2t.. is value register 2s of the lane's 16 k's, 2t+8.. is 2s+1.
                const uint32_t afrag[4] = {lo[2 * s], hi[2 * s], lo[2 * s + 1], hi[2 * s + 1]};
#pragma unroll
                for (int j = 0; j < NT; ++j) mma<MX>(acc[i][j], afrag, av[j][2 * s], av[j][2 * s + 1]);
            }
        }
    };

    // NVFP4 weight operands are value * 2^-14 (decode_nv_weight): alpha carries 2^14, exactly.
    // Read after pdl_wait (below): the kernel ahead (the activation quantizer) writes it.
    float alpha = 1.0f;
    auto store = [&](const float (&v)[T][NT][4], int mb, int gi) {
#pragma unroll
        for (int i = 0; i < T; ++i) {
            const int tile = (gi * W + warp) * T + i;
            if (tile >= p.m_tiles) continue;
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int n = tile * 16 + g + ((r & 2) ? 8 : 0);
                    const int m = mb * 8 * NT + 8 * j + 2 * t + (r & 1);
                    if (n < p.n && m < p.m) {
                        const float x = v[i][j][r] * alpha;
                        const size_t idx = (size_t)m * p.n + n;
                        if (p.out_fp16) reinterpret_cast<__half*>(p.out)[idx] = __float2half_rn(x);
                        else reinterpret_cast<__nv_bfloat16*>(p.out)[idx] = __float2bfloat16_rn(x);
                    }
                }
        }
    };

    // The CTA that owns unit u (ranges are [floor(b U / P), floor((b+1) U / P))).
    auto cta_of = [&](long long u) { return (int)(((u + 1) * P - 1) / U); };
    __shared__ int is_last;
    const size_t frag = (size_t)T * NT * 32;  // float4s per warp per partial
    float4* ws = reinterpret_cast<float4*>(p.ws);
    const int x_first = u_begin / C;  // = mb * G + gi of the first unit

    // Finish segment x (this CTA's chunks of one (mb, group)): store it, or hand in a partial.
    auto finish = [&](int x, bool complete) {
        const int mb = x / G, gi = x - mb * G;
        if (complete) {
            store(acc, mb, gi);
            return;
        }
        // Slot 0 holds a CTA's first segment, slot 1 its last (the middle ones are complete).
        const size_t mine = (((size_t)blockIdx.x * 2 + (x == x_first ? 0 : 1)) * W + warp) * frag + lane;
#pragma unroll
        for (int i = 0; i < T; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
                __stcg(ws + mine + (i * NT + j) * 32, make_float4(acc[i][j][0], acc[i][j][1], acc[i][j][2], acc[i][j][3]));
        __threadfence();
        __syncthreads();
        const int b_first = cta_of((long long)x * C), b_last = cta_of((long long)x * C + C - 1);
        if (threadIdx.x == 0) is_last = atomicAdd(p.counters + x, 1) == b_last - b_first;
        __syncthreads();
        if (!is_last) return;
        __threadfence();
        // Sum every part (this CTA's too, from the workspace) into acc, in CTA order.
        zero_acc();
        constexpr int R = (16 / (T * NT) > 8) ? 8 : (16 / (T * NT) < 1 ? 1 : 16 / (T * NT));  // <= 64 registers
        for (int b0 = b_first; b0 <= b_last; b0 += R) {
            float4 v[R][T][NT];
#pragma unroll
            for (int q = 0; q < R; ++q) {
                const int b = b0 + q;
                if (b <= b_last) {
                    const int first_x_of_b = (int)((U * b / P) / C);
                    const size_t src = (((size_t)b * 2 + (x == first_x_of_b ? 0 : 1)) * W + warp) * frag + lane;
#pragma unroll
                    for (int i = 0; i < T; ++i)
#pragma unroll
                        for (int j = 0; j < NT; ++j) v[q][i][j] = __ldcg(ws + src + (i * NT + j) * 32);
                }
            }
#pragma unroll
            for (int q = 0; q < R; ++q) {
                if (b0 + q <= b_last) {
#pragma unroll
                    for (int i = 0; i < T; ++i)
#pragma unroll
                        for (int j = 0; j < NT; ++j) {
                            acc[i][j][0] += v[q][i][j].x; acc[i][j][1] += v[q][i][j].y;
                            acc[i][j][2] += v[q][i][j].z; acc[i][j][3] += v[q][i][j].w;
                        }
                }
            }
        }
        store(acc, mb, gi);
        if (threadIdx.x == 0) p.counters[x] = 0;  // every CTA of this segment has arrived
    };

    const int nst = (u_end - u_begin + D - 1) / D;
    // PDL (fp4core/pdl.cuh): every read (A, scales, workspace, counters) comes after this.
    fp4core::pdl_wait();
    fp4core::pdl_launch_dependents();
    alpha = (p.alpha ? __ldg(p.alpha) : 1.0f) * weight_scale<MX>();
#pragma unroll 1
    for (int k = 0; k < STAGES - 1; ++k) issue(k);
    zero_acc();
    Cursor cc = Cursor::at(u_begin, C, G);
    int seg_c0 = cc.c;
    int u = u_begin;
#pragma unroll 1
    for (int k = 0; k < nst; ++k) {
        cp_wait<STAGES - 2>();
        __syncthreads();  // stage k landed for every thread; stage k-1's slot is free
        issue(k + STAGES - 1);
        decode_a(k);
        __syncthreads();  // activation fragments of stage k visible
#pragma unroll 1
        for (int d = 0; d < D && u < u_end; ++d, ++u) {
            if (cc.c == 0) seg_c0 = 0;
            compute(k % STAGES, k & 1, d);
            if (cc.c == C - 1 || u == u_end - 1) {
                finish(cc.x(G), seg_c0 == 0 && cc.c == C - 1);
                zero_acc();
            }
            cc.next(C, G);
        }
    }
    cp_wait<0>();  // no copy may still target shared memory when the CTA exits
}

// The opt-in dynamic shared memory limit: the 8-warp size, or the device's maximum if less
// (the 8-warp size of the largest tiles does not fit; those tactics are never offered).
template <int T, int NT>
int smem_limit() {
    int dev = 0, optin = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    const int want = (int)Smem<T, NT>::make(8).total, room = optin - 1024;  // static smem
    return want < room ? want : room;
}

template <bool MX, int T, int NT>
cudaError_t launch(const Fp4GemvParams& p, int grid, cudaStream_t stream) {
    const unsigned smem = Smem<T, NT>::make(p.warps).total;
    // One limit for every warp count: the largest (8 warps); set once (a benign race).
    static bool attr_done = false;
    if (!attr_done) {
        const cudaError_t e = cudaFuncSetAttribute(fp4_sk_kernel<MX, T, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   smem_limit<T, NT>());
        if (e != cudaSuccess) {
            cudaGetLastError();  // clear it: a later launch's cudaGetLastError must not report it
            return e;
        }
        attr_done = true;
    }
    return fp4core::launch_pdl(fp4_sk_kernel<MX, T, NT>, dim3(grid), dim3(32 * p.warps), smem, stream,
                               p.pdl != 0, 1u, p);
}

template <bool MX, int T, int NT>
int occupancy(int warps) {
    const unsigned smem = Smem<T, NT>::make(warps).total;
    if ((int)smem > smem_limit<T, NT>()) return 0;
    // A failure is reported as -1 and cleared: left pending, the next launch check (ours or
    // torch's) would blame it on another kernel.
    if (cudaFuncSetAttribute(fp4_sk_kernel<MX, T, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             smem_limit<T, NT>()) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, fp4_sk_kernel<MX, T, NT>, 32 * warps, smem) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    return n;
}

// The compiled (T, NT) pairs: registers bound T * NT (accumulators) for the larger T.
constexpr bool compiled(int T, int NT) {
    return T <= 2 || (T == 4 && NT <= 4) || (T == 8 && NT <= 2);
}

template <template <bool, int, int> class F, bool MX, int T, typename... A>
int dispatch_nt(int nt, A... args) {
    switch (nt) {
        case 1: if constexpr (compiled(T, 1)) return F<MX, T, 1>::run(args...); break;
        case 2: if constexpr (compiled(T, 2)) return F<MX, T, 2>::run(args...); break;
        case 4: if constexpr (compiled(T, 4)) return F<MX, T, 4>::run(args...); break;
        case 8: if constexpr (compiled(T, 8)) return F<MX, T, 8>::run(args...); break;
    }
    return -(int)cudaErrorInvalidValue;
}

// Calls F<MX, T, NT>::run(args...) for runtime (mx, t, nt); -cudaErrorInvalidValue for a
// pair that is not compiled.
template <template <bool, int, int> class F, typename... A>
int dispatch(int mx, int t, int nt, A... args) {
    switch (t) {
        case 1: return mx ? dispatch_nt<F, true, 1>(nt, args...) : dispatch_nt<F, false, 1>(nt, args...);
        case 2: return mx ? dispatch_nt<F, true, 2>(nt, args...) : dispatch_nt<F, false, 2>(nt, args...);
        case 4: return mx ? dispatch_nt<F, true, 4>(nt, args...) : dispatch_nt<F, false, 4>(nt, args...);
        case 8: return mx ? dispatch_nt<F, true, 8>(nt, args...) : dispatch_nt<F, false, 8>(nt, args...);
    }
    return -(int)cudaErrorInvalidValue;
}

template <bool MX, int T, int NT>
struct Launch {
    static int run(const Fp4GemvParams* p, int grid, cudaStream_t s) { return (int)launch<MX, T, NT>(*p, grid, s); }
};
template <bool MX, int T, int NT>
struct Occupancy {
    static int run(int warps) { return occupancy<MX, T, NT>(warps); }
};
template <bool MX, int T, int NT>
struct SmemBytes {
    static int run(int warps) { return (int)Smem<T, NT>::make(warps).total; }
};

}  // namespace

extern "C" {

// Launch `grid` CTAs on `stream`. mx: 0 NVFP4, 1 MXFP4; t: weight tiles (16 rows) per warp,
// 1/2/4/8; nt: activation tiles (8 rows) per pass, 1/2/4/8 (see compiled()). The caller
// keeps 1 <= grid <= mblocks * groups * (k / 64) and sizes ws for `grid`. Returns a
// cudaError_t (0 = launched).
int fp4_trtllm_gemv(const Fp4GemvParams* p, int mx, int t, int nt, int grid, void* stream) {
    if (p->warps < 1 || p->warps > 8 || (p->k & 63) || p->m < 1 || p->n < 1 || grid < 1)
        return (int)cudaErrorInvalidValue;
    const long long units = (long long)p->mblocks * p->groups * (p->k >> 6);
    if (grid > units) return (int)cudaErrorInvalidValue;
    const int r = dispatch<Launch>(mx, t, nt, p, grid, reinterpret_cast<cudaStream_t>(stream));
    return r < 0 ? -r : r;
}

// CTAs of this configuration that fit on one SM (its shared memory and registers), or -1.
int fp4_trtllm_occupancy(int mx, int t, int nt, int warps) {
    if (warps < 1 || warps > 8) return -1;
    return dispatch<Occupancy>(mx, t, nt, warps);
}

// Dynamic shared memory of one CTA, in bytes.
int fp4_trtllm_smem_bytes(int mx, int t, int nt, int warps) {
    return dispatch<SmemBytes>(mx, t, nt, warps);
}

const char* fp4_trtllm_error_string(int code) {
    return cudaGetErrorString(static_cast<cudaError_t>(code));
}

int fp4_trtllm_abi_version(void) { return 9; }
}
