// fp4-cutlass: Hopper (SM90a) FP4 block-scaled GEMM, out = alpha * A * B^T.
//
// Roles are swapped so that the weight fills WGMMA's M side: each consumer warpgroup computes
// a 64 (weight rows, n) x TM (activation rows, m) tile of out^T = B * A^T.
//
//  * B (weights, packed E2M1, N x K/2 bytes) and its 128x4 scale tiles are loaded by TMA /
//    bulk copies into shared memory through a STAGES-deep mbarrier pipeline (one producer warp).
//  * Each consumer thread reads 16 bytes (32 FP4 values) of two weight rows per stage, turns
//    them into bf16 with a few integer ops and one (NVFP4) or two (MXFP4) bf16x2 multiplies,
//    exactly, and feeds them to wgmma as its *register* operand (RS form).
//  * A (activations) is dequantized exactly to bf16 by a small pre-pass (act_dequant_kernel)
//    that also permutes K inside every 128-wide chunk, so that the 32 K positions a consumer
//    thread needs for the register fragment are 16 contiguous bytes of the weight row. The
//    permutation is a bijection applied to both operands, so the sum over K is unchanged.
//    The bf16 activation tile is the wgmma shared-memory operand (K-major, 128B swizzle,
//    loaded by TMA).
//    Weight-only calls (a_plain, W4A16) hand in A as bf16 already: the pre-pass only permutes
//    (act_permute_kernel), the GEMM is the same.
//  * Epilogue: alpha (device pointer, graph safe), the NVFP4 2^64 range compensation, cast to
//    bf16/fp16; with split-K the fp32 partials go to a workspace and a reduce kernel finishes.
//
//  * Programmatic dependent launch (Params.pdl; fp4core/pdl.cuh): each kernel waits for the
//    kernel ahead of it before touching anything another kernel writes. The GEMM's producer
//    first starts the weight and scale copies of its first stages (the prepared weight is not
//    written between calls), so they overlap the pre-pass's tail.
//
// Built through fp4core.jit for sm_90a only. Entry point: fp4c_sm90_gemm (see bottom).

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <utility>

#include <cute/arch/cluster_sm90.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/arch/mma_sm90_desc.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/arch/mma_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "fp4core/pdl.cuh"

namespace fp4c {

constexpr int kBK = 128;        // K values per pipeline stage
constexpr int kBKBytes = 64;    // bytes of one weight row per stage
constexpr int kThreads = 384;   // producer warpgroup + 2 consumer warpgroups
constexpr int kSfTile = 512;    // bytes of one 128x4 scale tile (128 rows x 4 blocks)

struct Params {
  const uint8_t* a;       // (m, k/2) packed E2M1
  const uint8_t* a_sf;    // A scales, 128x4 or 8x4
  const uint8_t* b;       // (n, k/2) packed E2M1
  const uint8_t* b_sf;    // B scales, 128x4
  const float* alpha;     // one float or null
  void* out;              // (m, n) bf16 or fp16
  void* act;              // workspace: (m, kp) bf16, K-permuted activations
  float* partial;         // workspace: (splits, m, n) fp32 when splits > 1
  int m, n, k;
  int a_sf_8x4;
  int out_fp16;
  int mx;                 // 0: NVFP4 (E4M3 / 16), 1: MXFP4 (E8M0 / 32)
  int splits;             // split-K over CTAs (grid.z)
  int tm;                 // activation rows per CTA (wgmma N)
  int bn;                 // weight rows per CTA: 128 (two consumer WGs split N) or 64 (split K)
  int cluster;            // CTAs per cluster along N sharing (multicasting) the activation tile
  int deep;               // 1: two wgmma batches in flight per warpgroup (3 fragment buffers; TM <= 128)
  int a_plain;            // 1: a is (m, k) bf16 row-major (weight-only call), a_sf unused
  int pdl;                // launch every kernel with programmatic dependent launch
};

__host__ __device__ constexpr int kp_of(int k) { return (k + kBK - 1) / kBK * kBK; }

// Stage layout: activation tile (two 128B-swizzled boxes of 64 K), weight tile, scale tiles.
template <int TM, int BN, bool MX>
struct Smem {
  static constexpr int kAct = TM * kBK * 2;
  static constexpr int kW = BN * kBKBytes;
  static constexpr int kSf = MX ? kSfTile : 2 * kSfTile;
  static constexpr int kStage = (kAct + kW + kSf + 1023) / 1024 * 1024;
  static constexpr int kBudget = 227 * 1024 - 1024 - 256;  // minus alignment slack, barriers
  static constexpr int kStagesRaw = kBudget / kStage;
  static constexpr int kStagesCapped = kStagesRaw > 8 ? 8 : kStagesRaw;
  // BN = 64: the two consumer WGs take alternate iterations (it = cw, cw + 2, ...) of stage
  // it % kStages. With an odd count a stage serves both WGs in turn, so a WG can wait on a
  // stage's `full` barrier two phases ahead of it; a parity wait cannot tell that phase from
  // the one before the current, returns at once and decodes a tile still in flight (a race:
  // TM = 256 had 3 stages). An even count gives every stage to one WG, used in order.
  static constexpr int kStages = BN == 64 ? (kStagesCapped & ~1) : kStagesCapped;
  // The consumer loop decodes stage it + step before it releases stage it (the software
  // pipeline below). With BN = 64 (step 2) those two must be different stages, so each WG
  // needs two of its own: at least 4 stages. TM = 256 with BN = 64 fits only 2 (70 KB a
  // stage): it + 2 then maps to the stage the WG still holds and the CTA deadlocks (seen on an
  // H100, 2026-12-06: every shape tried hung). That tile is not built (kTileBuilt).
  static constexpr bool kFits = BN == 128 ? kStages >= 2 : kStages >= 4;
  static constexpr int kBytes = kStages * kStage + 1024 + 256;
};

// Tiles with a deadlock-free pipeline in the shared memory budget (see Smem::kFits).
template <int TM, int BN>
constexpr bool kTileBuilt = Smem<TM, BN, false>::kFits && Smem<TM, BN, true>::kFits;

// ---------------------------------------------------------------------------------------
// FP4 decoding helpers
// ---------------------------------------------------------------------------------------

// 8 E2M1 codes of one 32-bit word -> four bf16x2 registers holding code pairs (j, j+4), as
// "raw" bf16 whose value is the E2M1 value * 2^-126 (exponent bits e1e0 at bits 8..7 and the
// mantissa bit at bit 6; e = 0 gives the subnormal m * 2^-127, matching 0 / 0.5 * 2^-126).
__device__ __forceinline__ void decode_word(uint32_t x, uint32_t (&r)[4]) {
  r[0] = ((x << 6) & 0x01C001C0u) | ((x << 12) & 0x80008000u);
  r[1] = ((x << 2) & 0x01C001C0u) | ((x << 8) & 0x80008000u);
  r[2] = ((x >> 2) & 0x01C001C0u) | ((x << 4) & 0x80008000u);
  r[3] = ((x >> 6) & 0x01C001C0u) | (x & 0x80008000u);
}

__device__ __forceinline__ uint32_t bmul2(uint32_t a, uint32_t b) {
  __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

// |E2M1 value| of a code, without a lookup table (a run-time indexed array would go to local memory).
__device__ __forceinline__ float e2m1_magnitude(uint32_t code) {
  const uint32_t e = (code >> 1) & 3, m = code & 1;
  return e == 0 ? 0.5f * (float)m : __uint_as_float(((e + 126u) << 23) | (m << 22));
}

__device__ __forceinline__ float e4m3_to_float(uint32_t byte) {
  __nv_fp8_e4m3 v;
  v.__x = static_cast<__nv_fp8_storage_t>(byte & 0xFF);
  return static_cast<float>(v);
}

// NVFP4 weight scale as bf16x2 {s * 2^62, s * 2^62}: raw * that = value * s * 2^-64, exact and
// inside bf16's normal range for every finite E4M3 s; the epilogue multiplies by 2^64.
__device__ __forceinline__ uint32_t nv_scale2(uint32_t byte) {
  float s = e4m3_to_float(byte) * 4.611686018427387904e18f;  // 2^62
  __nv_bfloat16 h = __float2bfloat16_rn(s);
  uint32_t u = *reinterpret_cast<uint16_t*>(&h);
  return u | (u << 16);
}

// E8M0 byte e -> bf16 bits of 2^(e-127) (e = 0 is the bf16 subnormal 2^-127; 255 -> NaN).
__device__ __forceinline__ uint32_t e8m0_bf16_bits(uint32_t e) {
  e &= 0xFF;
  return e == 0 ? 0x0040u : (e == 255 ? 0x7FC0u : (e << 7));
}

// A-fragment permutation inside a 128-wide K chunk (see the file comment). Thread quad q holds
// physical K 32q..32q+31; wgmma k-step s, register pair p (a0/a1: p=0, a2/a3: p=1), half h:
//   logical 16s + 8p + 2q + h  <->  physical 32q + 8(s/2) + 2(s%2) + p + 4h.
__host__ __device__ constexpr int phys_of_logical(int l) {
  return 32 * ((l % 8) / 2) + 8 * ((l / 16) / 2) + 2 * ((l / 16) % 2) + (l % 16) / 8 + 4 * (l % 2);
}

__device__ __forceinline__ int sf_offset(int r, int c, int pcol_tiles, bool is8x4) {
  if (is8x4) return ((r >> 3) * pcol_tiles + (c >> 2)) * 32 + (r & 7) * 4 + (c & 3);
  return ((r >> 7) * pcol_tiles + (c >> 2)) * 512 + (r & 31) * 16 + ((r >> 5) & 3) * 4 + (c & 3);
}

// ---------------------------------------------------------------------------------------
// Activation pre-pass: A (FP4 + scales) -> bf16 (m, kp), K permuted per 128-chunk, tail zero.
// One thread per 16-byte output segment (8 logical K positions), so a warp stores 512
// contiguous bytes; the 16 threads of one 128-chunk share its 64 input bytes through L1.
// Segment g = 2s + p of a chunk holds logical 16s + 8p + 2q + h (q = 0..3, h = 0..1), i.e.
// physical 32q + 8(s/2) + 2(s%2) + p + 4h: nibbles 2(s%2) + p (+4) of word 4q + s/2.
// ---------------------------------------------------------------------------------------
template <bool MX>
__global__ void __launch_bounds__(256) act_dequant_kernel(Params p) {
  fp4core::pdl_wait();  // the GEMM of the previous call may still read p.act
  fp4core::pdl_launch_dependents();
  const int chunks = kp_of(p.k) / kBK;
  const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (long)p.m * chunks * 16) return;
  const int g = (int)(idx % 16);
  const int c = (int)((idx / 16) % chunks);
  const int row = (int)(idx / (16L * chunks));
  const int s = g >> 1, pp = g & 1;
  const int kvalid = min(kBK, p.k - c * kBK);  // 128 or 64 (then q = 2, 3 are past K)
  const int bs = MX ? 32 : 16;
  const int nblocks = p.k / bs;
  const int pcol_tiles = (nblocks + 3) / 4;
  const uint32_t* words = reinterpret_cast<const uint32_t*>(p.a + (size_t)row * (p.k / 2) + c * kBKBytes);
  const int sh0 = 4 * (2 * (s & 1) + pp);  // nibble pair (j, j + 4) of each word, j = sh0 / 4
  uint32_t packed[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    uint32_t v2 = 0;  // past K (tail half-chunk): zeros
    if (q * 32 < kvalid) {
      const uint32_t t = __ldg(words + 4 * q + (s >> 1)) >> sh0;
      const uint32_t raw = ((t << 6) & 0x01C001C0u) | ((t << 12) & 0x80008000u);  // as decode_word
      const int blk = MX ? c * 4 + q : c * 8 + 2 * q + (s >> 2);
      const uint32_t byte = p.a_sf[sf_offset(row, blk, pcol_tiles, p.a_sf_8x4 != 0)];
      uint32_t sb;
      if constexpr (MX) {
        sb = e8m0_bf16_bits(byte);
      } else {
        __nv_bfloat16 h = __float2bfloat16_rn(e4m3_to_float(byte));  // exact
        sb = *reinterpret_cast<uint16_t*>(&h);
      }
      // raw * 2^126 is the exact E2M1 value; times the scale is exact in bf16 (<= 5 significant bits).
      v2 = bmul2(bmul2(raw, 0x7E807E80u), sb | (sb << 16));
    }
    packed[q] = v2;
  }
  uint4* dst = reinterpret_cast<uint4*>(reinterpret_cast<__nv_bfloat16*>(p.act) + (size_t)row * kp_of(p.k) + c * kBK) + g;
  *dst = make_uint4(packed[0], packed[1], packed[2], packed[3]);
}

// Weight-only pre-pass: A (m, k) bf16 -> the same permuted (m, kp) buffer, no arithmetic.
// Output segment g = 2s + p of chunk c, word q holds physical K 32q + 8(s/2) + 2(s%2) + p
// (low half) and that + 4 (high half), as act_dequant_kernel writes them; zeros past K.
__global__ void __launch_bounds__(256) act_permute_kernel(Params p) {
  fp4core::pdl_wait();  // the GEMM of the previous call may still read p.act
  fp4core::pdl_launch_dependents();
  const int chunks = kp_of(p.k) / kBK;
  const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (long)p.m * chunks * 16) return;
  const int g = (int)(idx % 16);
  const int c = (int)((idx / 16) % chunks);
  const int row = (int)(idx / (16L * chunks));
  const int s = g >> 1, pp = g & 1;
  const int kvalid = min(kBK, p.k - c * kBK);
  const uint16_t* src = reinterpret_cast<const uint16_t*>(p.a) + (size_t)row * p.k + c * kBK;
  const int off = 8 * (s >> 1) + 2 * (s & 1) + pp;
  uint32_t packed[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    packed[q] = 0;  // past K (tail half-chunk): zeros
    if (q * 32 < kvalid) {
      const int ph = 32 * q + off;
      packed[q] = (uint32_t)__ldg(src + ph) | ((uint32_t)__ldg(src + ph + 4) << 16);
    }
  }
  uint4* dst = reinterpret_cast<uint4*>(reinterpret_cast<__nv_bfloat16*>(p.act) + (size_t)row * kp_of(p.k) + c * kBK) + g;
  *dst = make_uint4(packed[0], packed[1], packed[2], packed[3]);
}

// ---------------------------------------------------------------------------------------
// The GEMM kernel.
// ---------------------------------------------------------------------------------------
template <int TM>
struct Mma {
  using Op = decltype(cute::SM90::GMMA::rs_op_selector<cute::bfloat16_t, cute::bfloat16_t, float,
                                                       cute::Shape<cute::_64, cute::Int<TM>, cute::_16>,
                                                       cute::SM90::GMMA::Major::K, cute::SM90::GMMA::Major::K>());
  static constexpr int kAcc = TM / 2;  // fp32 accumulators per thread (64 x TM / 128)

  template <size_t... I>
  __device__ __forceinline__ static void call(const uint32_t (&a)[4], uint64_t desc, float (&d)[kAcc],
                                              std::index_sequence<I...>) {
    Op::fma(a[0], a[1], a[2], a[3], desc, d[I]...);
  }
  __device__ __forceinline__ static void fma(const uint32_t (&a)[4], uint64_t desc, float (&d)[kAcc]) {
    call(a, desc, d, std::make_index_sequence<kAcc>{});
  }
};

// Descriptor of a K-major, 128B-swizzled bf16 tile (rows of 128 bytes, 8-row groups 1 KB apart).
__device__ __forceinline__ uint64_t act_desc(uint32_t smem_addr) {
  cute::GmmaDescriptor d;
  d.bitfield.start_address_ = (uint16_t)((smem_addr & 0x3FFFF) >> 4);
  d.bitfield.leading_byte_offset_ = 1;
  d.bitfield.stride_byte_offset_ = 1024 >> 4;
  d.bitfield.base_offset_ = 0;
  d.bitfield.layout_type_ = 1;  // SWIZZLE_128B
  return d.desc_;
}

template <int TM, int BN, bool MX>
struct Consumer {
  using S = Smem<TM, BN, MX>;
  static constexpr int kAcc = TM / 2;

  // Read this thread's 2 x 16 weight bytes and scales of one stage; decode to fragments.
  __device__ __forceinline__ static void dequant(const uint8_t* stage, int wrow, int sf_row, int q, bool tail,
                                                 uint32_t (&f)[2][16]) {
    const uint8_t* wt = stage + S::kAct;
    const uint8_t* sf = wt + S::kW;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int r = wrow + 8 * t;
      const uint4 v = *reinterpret_cast<const uint4*>(wt + r * kBKBytes + q * 16);
      const uint32_t words[4] = {v.x, v.y, v.z, v.w};
      const int sr = sf_row + 8 * t;
      const int so = (sr & 31) * 16 + ((sr >> 5) & 3) * 4;
      if constexpr (!MX) {
        const uint32_t two = *reinterpret_cast<const uint16_t*>(sf + (q >> 1) * kSfTile + so + 2 * (q & 1));
        uint32_t s0 = nv_scale2(two & 0xFF), s1 = nv_scale2(two >> 8);
        if (tail && q >= 2) { s0 = 0; s1 = 0; }  // scale tile past K: not loaded this stage
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          uint32_t r4[4];
          decode_word(words[i], r4);
          const uint32_t sc = i < 2 ? s0 : s1;
#pragma unroll
          for (int j = 0; j < 4; ++j) f[t][4 * i + j] = bmul2(r4[j], sc);
        }
      } else {
        const uint32_t e = sf[so + q];
        const uint32_t sb = e8m0_bf16_bits(e);
        const uint32_t sc = sb | (sb << 16);
        const uint32_t two126 = 0x7E807E80u;  // bf16 2^126 twice: raw -> exact E2M1 value
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          uint32_t r4[4];
          decode_word(words[i], r4);
#pragma unroll
          for (int j = 0; j < 4; ++j) f[t][4 * i + j] = bmul2(bmul2(r4[j], two126), sc);
        }
      }
    }
  }

  __device__ __forceinline__ static void mma_stage(const uint8_t* stage, const uint32_t (&f)[2][16], float (&acc)[kAcc]) {
    const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(stage));
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      // k-step s: fragment {a0, a1, a2, a3} = {row r pair p=0, row r+8 p=0, row r p=1, row r+8 p=1}
      const uint32_t a[4] = {f[0][2 * s], f[1][2 * s], f[0][2 * s + 1], f[1][2 * s + 1]};
      const uint32_t addr = base + (s / 4) * (TM * 128) + (s % 4) * 32;
      Mma<TM>::fma(a, act_desc(addr), acc);
    }
  }
};

template <int TM, int BN, bool MX, int CL, bool DEEP>
__global__ void __launch_bounds__(kThreads, 1)
fp4_gemm_kernel(const __grid_constant__ CUtensorMap tm_act, const __grid_constant__ CUtensorMap tm_w, Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = Smem<TM, BN, MX>;
  using C = Consumer<TM, BN, MX>;
  constexpr int ST = S::kStages;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + ST * S::kStage);
  uint64_t* empty = full + ST;

  const int wg = threadIdx.x / 128;
  const int n0 = blockIdx.x * BN;
  const int m0 = blockIdx.y * TM;
  const int chunks = kp_of(p.k) / kBK;
  const int per_split = (chunks + p.splits - 1) / p.splits;
  const int c_begin = min(chunks, (int)blockIdx.z * per_split);
  const int c_end = min(chunks, c_begin + per_split);
  const int iters = c_end - c_begin;
  const int bs = MX ? 32 : 16;
  const int sf_tiles = (p.k / bs + 3) / 4;  // 128x4 column tiles of B's scales
  // A stage is consumed by both consumer WGs (BN=128: each its 64 rows) or one (BN=64: K split).
  constexpr int kConsumersPerStage = BN == 128 ? 2 : 1;
  const bool sf_rows_exist = n0 < (p.n + 127) / 128 * 128;

  // With a cluster, every CTA's producer multicasts its slice of the activation tile into all
  // CTAs' stage buffers, so a stage is free only when the consumers of every CTA released it.
  const uint32_t rank = CL > 1 ? cute::block_rank_in_cluster() : 0;
  if (threadIdx.x == 0) {
    for (int i = 0; i < ST; ++i) {
      cutlass::arch::ClusterTransactionBarrier::init(&full[i], 1);
      cutlass::arch::ClusterBarrier::init(&empty[i], 4 * kConsumersPerStage * CL);
    }
    cutlass::arch::fence_barrier_init();
  }
  if constexpr (CL > 1) cute::cluster_sync();  // peers' barriers are initialised before use
  else __syncthreads();

  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<40>();
    if (threadIdx.x == 0) {
      // Scale bytes of chunk c: NVFP4 chunks take two 128x4 tiles (one at an odd end of K);
      // a cluster-padding CTA past N reads nothing.
      auto sf_bytes_of = [&](int c) {
        return !sf_rows_exist ? 0 : MX ? kSfTile : (2 * c + 1 < sf_tiles ? 2 * kSfTile : kSfTile);
      };
      auto expect = [&](int it) {
        cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&full[it % ST],
                                                                       S::kAct + S::kW + sf_bytes_of(c_begin + it));
      };
      // The weight and scale copies of one stage.
      auto load_weight = [&](int it) {
        const int st = it % ST;
        const int c = c_begin + it;
        uint8_t* stage = smem + st * S::kStage;
        cute::SM90_TMA_LOAD_2D::copy(&tm_w, &full[st], 0, stage + S::kAct, c * kBKBytes, n0);
        if (const int sf_bytes = sf_bytes_of(c)) {
          const uint8_t* sf_src = p.b_sf + ((size_t)(n0 / 128) * sf_tiles + (MX ? c : 2 * c)) * kSfTile;
          cute::SM90_BULK_COPY_G2S::copy(sf_src, &full[st], stage + S::kAct + S::kW, sf_bytes);
        }
      };
      // PDL: the first stages' weights before waiting for the kernel ahead, which is always
      // this call's pre-pass: it triggers only after its own wait, so whatever prepared the
      // weight has finished (fp4core/pdl.cuh). Without PDL, the order of before: per stage,
      // activation tile then weight.
      const int pre = p.pdl ? (iters < ST ? iters : ST) : 0;
      for (int it = 0; it < pre; ++it) {
        expect(it);
        load_weight(it);
      }
      fp4core::pdl_wait();
      for (int it = 0; it < iters; ++it) {
        const int st = it % ST;
        if (it >= ST) cutlass::arch::ClusterBarrier::wait(&empty[st], ((it / ST) - 1) & 1);
        const int c = c_begin + it;
        uint8_t* stage = smem + st * S::kStage;
        if (it >= pre) expect(it);
        if constexpr (CL == 1) {
          cute::SM90_TMA_LOAD_2D::copy(&tm_act, &full[st], 0, stage, c * kBK, m0);
          cute::SM90_TMA_LOAD_2D::copy(&tm_act, &full[st], 0, stage + TM * 128, c * kBK + 64, m0);
        } else {
          constexpr int kSlice = TM / CL;  // rows this CTA loads for the whole cluster
          const uint16_t mask = (1u << CL) - 1;
          cute::SM90_TMA_LOAD_MULTICAST_2D::copy(&tm_act, &full[st], mask, 0, stage + rank * kSlice * 128,
                                                 c * kBK, m0 + rank * kSlice);
          cute::SM90_TMA_LOAD_MULTICAST_2D::copy(&tm_act, &full[st], mask, 0,
                                                 stage + TM * 128 + rank * kSlice * 128, c * kBK + 64,
                                                 m0 + rank * kSlice);
        }
        if (it >= pre) load_weight(it);
      }
    } else {
      fp4core::pdl_wait();
    }
    fp4core::pdl_launch_dependents();
  } else {
    cutlass::arch::warpgroup_reg_alloc<232>();
    fp4core::pdl_wait();  // at the start: before the epilogue's reads (alpha) and writes (out, partial)
    fp4core::pdl_launch_dependents();
    const int cw = wg - 1;                 // consumer index 0/1
    const int warp = (threadIdx.x / 32) % 4;
    const int lane = threadIdx.x % 32;
    const int q = lane % 4;
    const int row_base = BN == 128 ? 64 * cw : 0;
    const int wrow = row_base + 16 * warp + lane / 4;   // weight row inside the CTA tile
    const int sf_row = (n0 % 128) + wrow;              // row inside the 128-row scale tile
    const int first = BN == 128 ? 0 : cw;
    const int step = BN == 128 ? 1 : 2;
    float acc[C::kAcc];
#pragma unroll
    for (int i = 0; i < C::kAcc; ++i) acc[i] = 0.f;
    uint32_t f[2][2][16];
    const bool last_tail = (p.k % kBK) != 0;

    auto wait_dequant = [&](int it, uint32_t (&fr)[2][16]) {
      const int st = it % ST;
      cutlass::arch::ClusterTransactionBarrier::wait(&full[st], (it / ST) & 1);
      const bool tail = last_tail && (c_begin + it == chunks - 1);
      C::dequant(smem + st * S::kStage, wrow, sf_row, q, tail, fr);
    };
    auto release = [&](int it) {
      __syncwarp();
      if (lane == 0) {
        if constexpr (CL == 1) {
          cutlass::arch::ClusterBarrier::arrive(&empty[it % ST]);
        } else {
#pragma unroll
          for (int r = 0; r < CL; ++r) cutlass::arch::ClusterBarrier::arrive(&empty[it % ST], r, 1);
        }
      }
    };
    auto issue = [&](int it, const uint32_t (&fr)[2][16]) {
#pragma unroll
      for (int i = 0; i < C::kAcc; ++i) cute::warpgroup_fence_operand(acc[i]);
      cute::warpgroup_arrive();
      C::mma_stage(smem + (it % ST) * S::kStage, fr, acc);
      cute::warpgroup_commit_batch();
#pragma unroll
      for (int i = 0; i < C::kAcc; ++i) cute::warpgroup_fence_operand(acc[i]);
    };

    // wgmma reads its register operand asynchronously: keep the fragment live (in PTX terms)
    // until the wait, so its registers are not reused for the next stage's fragment.
    auto fence_frag = [&](uint32_t (&fr)[2][16]) {
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int i = 0; i < 16; ++i) cute::warpgroup_fence_operand(fr[t][i]);
    };

    if constexpr (DEEP) {
      // Two batches in flight: stage `it` is issued before waiting for `it - step`, and the
      // stage after next is decoded into the buffer that batch `it - step` has just released.
      // Deadlock-free with >= 2 * step + 1 stages (the oldest held stage never waits on a newer one).
      static_assert(TM <= 128, "3 fragment buffers + accumulators must fit 232 registers");
      uint32_t g[3][2][16];
      int it = first;
      if (it < iters) wait_dequant(it, g[0]);
      if (it + step < iters) wait_dequant(it + step, g[1]);
#define FP4C_DEEP_STEP(CUR, PRV)                                            \
      if (it >= iters) break;                                               \
      issue(it, g[CUR]);                                                    \
      if (it != first) {                                                    \
        cute::warpgroup_wait<1>();                                          \
        fence_frag(g[PRV]);                                                 \
        release(it - step);                                                 \
      }                                                                     \
      if (it + 2 * step < iters) wait_dequant(it + 2 * step, g[PRV]);       \
      it += step;
      while (true) {
        FP4C_DEEP_STEP(0, 2)
        FP4C_DEEP_STEP(1, 0)
        FP4C_DEEP_STEP(2, 1)
      }
#undef FP4C_DEEP_STEP
      if (it != first) {
        cute::warpgroup_wait<0>();
        release(it - step);
      }
    } else {
    // Software pipeline: the next stage is decoded while this stage's wgmmas run.
    int it = first;
    if (it < iters) wait_dequant(it, f[0]);
    while (it < iters) {
      issue(it, f[0]);
      if (it + step < iters) wait_dequant(it + step, f[1]);
      cute::warpgroup_wait<0>();
      fence_frag(f[0]);
      release(it);
      it += step;
      if (it >= iters) break;
      issue(it, f[1]);
      if (it + step < iters) wait_dequant(it + step, f[0]);
      cute::warpgroup_wait<0>();
      fence_frag(f[1]);
      release(it);
      it += step;
    }
    }

    if constexpr (BN == 64) {
      // The two consumers summed alternate stages of the same tile: add WG1's partial to WG0's.
      asm volatile("bar.sync 1, 256;\n" ::: "memory");
      float* red = reinterpret_cast<float*>(smem);
      const int t = threadIdx.x - 128 * wg;
      if (cw == 1) {
#pragma unroll
        for (int i = 0; i < C::kAcc; ++i) red[i * 128 + t] = acc[i];
      }
      asm volatile("bar.sync 1, 256;\n" ::: "memory");
      if (cw == 0) {
#pragma unroll
        for (int i = 0; i < C::kAcc; ++i) acc[i] += red[i * 128 + t];
      }
    }
    const bool writer = BN == 128 || cw == 0;

    // Epilogue. acc[4j + 2u + v]: n = wrow + 8u, m = 8j + 2q + v.
    const int n_a = n0 + wrow;
    if (!writer) {
    } else if (p.splits == 1) {
      float scale = MX ? 1.f : 1.8446744073709551616e19f;  // 2^64 (NVFP4 weight range shift)
      const float alpha = p.alpha ? __ldg(p.alpha) : 1.f;
#pragma unroll
      for (int j = 0; j < TM / 8; ++j) {
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          const int m = m0 + 8 * j + 2 * q + v;
          if (m >= p.m) continue;
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            const int n = n_a + 8 * u;
            if (n >= p.n) continue;
            const float val = (acc[4 * j + 2 * u + v] * scale) * alpha;
            if (p.out_fp16)
              reinterpret_cast<__half*>(p.out)[(size_t)m * p.n + n] = __float2half_rn(val);
            else
              reinterpret_cast<__nv_bfloat16*>(p.out)[(size_t)m * p.n + n] = __float2bfloat16_rn(val);
          }
        }
      }
    } else {
      float* part = p.partial + (size_t)blockIdx.z * p.m * p.n;
#pragma unroll
      for (int j = 0; j < TM / 8; ++j) {
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          const int m = m0 + 8 * j + 2 * q + v;
          if (m >= p.m) continue;
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            const int n = n_a + 8 * u;
            if (n < p.n) part[(size_t)m * p.n + n] = acc[4 * j + 2 * u + v];
          }
        }
      }
    }
  }
  // Peers may still arrive on our barriers: no CTA of a cluster leaves before all are done.
  if constexpr (CL > 1) cute::cluster_sync();
#endif
}

// Split-K finish: out = cast(alpha * shift * sum_z partial[z]).
__global__ void __launch_bounds__(256) splitk_reduce_kernel(Params p) {
  fp4core::pdl_wait();
  fp4core::pdl_launch_dependents();
  const size_t total = (size_t)p.m * p.n;
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  float s = 0.f;
  for (int z = 0; z < p.splits; ++z) s += p.partial[z * total + i];
  const float shift = p.mx ? 1.f : 1.8446744073709551616e19f;
  const float val = (s * shift) * (p.alpha ? __ldg(p.alpha) : 1.f);
  if (p.out_fp16) reinterpret_cast<__half*>(p.out)[i] = __float2half_rn(val);
  else reinterpret_cast<__nv_bfloat16*>(p.out)[i] = __float2bfloat16_rn(val);
}

// ---------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------
using EncodeFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

static EncodeFn encode_fn() {
  static EncodeFn fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      ptr = nullptr;
    return reinterpret_cast<EncodeFn>(ptr);
  }();
  return fn;
}

static int make_map(CUtensorMap* map, CUtensorMapDataType dt, const void* base, uint64_t inner, uint64_t outer,
                    uint64_t row_bytes, uint32_t box_inner, uint32_t box_outer, CUtensorMapSwizzle swz) {
  EncodeFn fn = encode_fn();
  if (!fn) return -1;
  cuuint64_t dims[2] = {inner, outer};
  cuuint64_t strides[1] = {row_bytes};
  cuuint32_t box[2] = {box_inner, box_outer};
  cuuint32_t estr[2] = {1, 1};
  CUresult r = fn(map, dt, 2, const_cast<void*>(base), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE, swz,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? 0 : -2;
}

template <int TM, int BN, bool MX, int CL, bool DEEP>
static cudaError_t launch_gemm(const Params& p, cudaStream_t stream) {
  using S = Smem<TM, BN, MX>;
  // The attribute is per device: remember, per instantiation, the devices it was set on
  // (a race only sets it twice, which is harmless).
  static unsigned long long attr_set = 0;
  int dev = 0;
  cudaError_t e0 = cudaGetDevice(&dev);
  if (e0 != cudaSuccess) return e0;
  if (dev >= 64 || !((attr_set >> dev) & 1ull)) {
    cudaError_t e = cudaFuncSetAttribute(fp4_gemm_kernel<TM, BN, MX, CL, DEEP>, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kBytes);
    if (e != cudaSuccess) return e;
    if (dev < 64) attr_set |= 1ull << dev;
  }
  CUtensorMap tm_act, tm_w;
  const int kp = kp_of(p.k);
  if (make_map(&tm_act, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, p.act, kp, p.m, (uint64_t)kp * 2, 64, TM / CL,
               CU_TENSOR_MAP_SWIZZLE_128B) != 0)
    return cudaErrorInvalidValue;
  if (make_map(&tm_w, CU_TENSOR_MAP_DATA_TYPE_UINT8, p.b, p.k / 2, p.n, p.k / 2, kBKBytes, BN,
               CU_TENSOR_MAP_SWIZZLE_NONE) != 0)
    return cudaErrorInvalidValue;
  const int gx = ((p.n + BN - 1) / BN + CL - 1) / CL * CL;  // whole clusters; extra CTAs store nothing
  dim3 grid(gx, (p.m + TM - 1) / TM, p.splits);
  return fp4core::launch_pdl(fp4_gemm_kernel<TM, BN, MX, CL, DEEP>, grid, dim3(kThreads), S::kBytes, stream,
                             p.pdl != 0, (unsigned)CL, tm_act, tm_w, p);
}

template <int BN, bool MX, int CL>
static cudaError_t dispatch_tm(const Params& p, cudaStream_t s) {
  const bool d = p.deep != 0;
  switch (p.tm) {
    case 16: return d ? launch_gemm<16, BN, MX, CL, true>(p, s) : launch_gemm<16, BN, MX, CL, false>(p, s);
    case 32: return d ? launch_gemm<32, BN, MX, CL, true>(p, s) : launch_gemm<32, BN, MX, CL, false>(p, s);
    case 64: return d ? launch_gemm<64, BN, MX, CL, true>(p, s) : launch_gemm<64, BN, MX, CL, false>(p, s);
    case 128: return d ? launch_gemm<128, BN, MX, CL, true>(p, s) : launch_gemm<128, BN, MX, CL, false>(p, s);
    case 256:
      if constexpr (kTileBuilt<256, BN>) return d ? cudaErrorInvalidValue : launch_gemm<256, BN, MX, CL, false>(p, s);
      return cudaErrorNotSupported;  // TM = 256 with BN = 64: no deadlock-free pipeline fits
    default: return cudaErrorInvalidValue;
  }
}

template <int BN, bool MX>
static cudaError_t dispatch_cl(const Params& p, cudaStream_t s) {
  switch (p.cluster) {
    case 1: return dispatch_tm<BN, MX, 1>(p, s);
    case 2: return dispatch_tm<BN, MX, 2>(p, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace fp4c

extern "C" {

int fp4c_abi_version() { return 5; }

int fp4c_params_size() { return (int)sizeof(fp4c::Params); }

const char* fp4c_error_string(int err) {
  if (err == -1) return "cuTensorMapEncodeTiled is not available from the driver";
  if (err == -2) return "cuTensorMapEncodeTiled rejected the tensor (alignment or size)";
  return cudaGetErrorString(static_cast<cudaError_t>(err));
}

// Dynamic shared memory one CTA of a tactic needs (bytes), or -1 for an unknown tactic.
int fp4c_smem_bytes(int tm, int bn, int mx) {
#define FP4C_SMEM(T)                                                                    \
  if (tm == T) return bn == 128 ? (mx ? fp4c::Smem<T, 128, true>::kBytes : fp4c::Smem<T, 128, false>::kBytes) \
                                : (mx ? fp4c::Smem<T, 64, true>::kBytes : fp4c::Smem<T, 64, false>::kBytes);
  FP4C_SMEM(16) FP4C_SMEM(32) FP4C_SMEM(64) FP4C_SMEM(128) FP4C_SMEM(256)
#undef FP4C_SMEM
  return -1;
}

// Pre-pass + GEMM (+ split-K reduce) on `stream`. Returns 0 or a cudaError_t / negative code.
int fp4c_sm90_gemm(const fp4c::Params* pp, cudaStream_t stream) {
  const fp4c::Params& p = *pp;
  if (p.bn != 64 && p.bn != 128) return cudaErrorInvalidValue;
  const int chunks = fp4c::kp_of(p.k) / fp4c::kBK;
  const long threads = (long)p.m * chunks * 16;
  const int blocks = (int)((threads + 255) / 256);
  const bool pdl = p.pdl != 0;
  cudaError_t e = p.a_plain ? fp4core::launch_pdl(fp4c::act_permute_kernel, blocks, 256, 0, stream, pdl, 1u, p)
                  : p.mx    ? fp4core::launch_pdl(fp4c::act_dequant_kernel<true>, blocks, 256, 0, stream, pdl, 1u, p)
                            : fp4core::launch_pdl(fp4c::act_dequant_kernel<false>, blocks, 256, 0, stream, pdl, 1u, p);
  if (e != cudaSuccess) return e;
  if (p.bn == 128) e = p.mx ? fp4c::dispatch_cl<128, true>(p, stream) : fp4c::dispatch_cl<128, false>(p, stream);
  else e = p.mx ? fp4c::dispatch_cl<64, true>(p, stream) : fp4c::dispatch_cl<64, false>(p, stream);
  if (e != cudaSuccess) return e;
  if (p.splits > 1) {
    const size_t total = (size_t)p.m * p.n;
    e = fp4core::launch_pdl(fp4c::splitk_reduce_kernel, (unsigned)((total + 255) / 256), 256, 0, stream, pdl, 1u, p);
  }
  return e;
}

}  // extern "C"
