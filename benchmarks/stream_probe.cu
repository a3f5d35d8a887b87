// Read-bandwidth probe for the fp4-trtllm decode kernels (issue 5): the split-K kernel's
// loads alone (no decode, no MMA), over the weight bytes of one M = 1 8192 x 8192 NVFP4 GEMM
// (32 MiB; 8 copies used in turn, so L2 holds none), with its grid (32 x 12 CTAs of 4 warps, 4 tiles of 16 rows per warp, 3 chunks in
// flight per lane), in three layouts and two load flavours, against a device-to-device copy.
// It separates "the access pattern caps the rate" from "the kernel's work caps it".
//
//   layout 0 "tile-major": the prepared layout of fp4_trtllm/layout.py up to 0.3:
//            [tile][chunk][512 B], so a warp's 4 tiles are 4 streams 64 KiB apart (K = 8192:
//            128 chunks per tile).
//   layout 1 "group-major": [group of 16 tiles][chunk][tile][512 B] (the prepared layout
//            since 0.4): a CTA's 16 tiles of one chunk are 8 KiB contiguous, its whole K range
//            one contiguous run. (On this 32 MiB weight with ~11 chunks per CTA the probe
//            showed no gain; benchmarks/bulk_probe.cu, with long per-CTA runs, did.)
//   layout 2 "linear": each warp reads consecutive 512 B pieces of one contiguous range.
//   loads: 0 = ld.global.nc.L1::no_allocate.v4 (what the kernel uses), 1 = ld.global.v4.
//
//   nvcc -O3 -arch=sm_90a -o /tmp/stream_probe benchmarks/stream_probe.cu && /tmp/stream_probe
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdint>

constexpr int T = 4, W = 4, STAGES = 3, TILES = 512, CHUNKS = 128, SPLITS = 12, GROUP = 16;

template <int NC>
__device__ __forceinline__ uint4 ld(const uint4* p) {
    uint4 v;
    if (NC) asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                         : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    else asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];"
                      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// Offset (in uint4) of lane `lane`'s 16 bytes of (tile, chunk) in `layout`.
__device__ __forceinline__ size_t offset(int layout, int tile, int chunk, int lane) {
    size_t piece;  // index of the 512-byte piece
    if (layout == 0) piece = (size_t)tile * CHUNKS + chunk;
    else if (layout == 1) piece = ((size_t)(tile / GROUP) * CHUNKS + chunk) * GROUP + tile % GROUP;
    else piece = (size_t)chunk * TILES + tile;  // chunk-major: every warp walks one linear range
    return piece * 32 + lane;
}

template <int NC>
__global__ void __launch_bounds__(128) probe(const uint4* __restrict__ w, int layout, uint32_t* sink) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int tile0 = (blockIdx.x * W + warp) * T;
    const int c0 = CHUNKS * blockIdx.y / SPLITS, c1 = CHUNKS * (blockIdx.y + 1) / SPLITS;
    uint4 ring[STAGES][T];
    uint32_t acc = 0;
#pragma unroll
    for (int s = 0; s < STAGES; ++s)
#pragma unroll
        for (int i = 0; i < T; ++i)
            if (c0 + s < c1) ring[s][i] = ld<NC>(w + offset(layout, tile0 + i, c0 + s, lane));
    for (int c = c0; c < c1; c += STAGES) {
#pragma unroll
        for (int s = 0; s < STAGES; ++s) {
            if (c + s < c1) {
#pragma unroll
                for (int i = 0; i < T; ++i) acc ^= ring[s][i].x ^ ring[s][i].y ^ ring[s][i].z ^ ring[s][i].w;
                if (c + s + STAGES < c1)
#pragma unroll
                    for (int i = 0; i < T; ++i) ring[s][i] = ld<NC>(w + offset(layout, tile0 + i, c + s + STAGES, lane));
            }
        }
    }
    if (acc == 0x12345678u) sink[0] = acc;  // keeps the loads; never true for the fill below
}

int main() {
    const size_t bytes = (size_t)TILES * CHUNKS * 512;  // 32 MiB
    // 8 copies of the weight, used in turn, so no launch finds its bytes in the 50 MB L2
    constexpr int NBUF = 8;
    uint4 *w[NBUF], *dst;
    uint32_t* sink;
    for (int i = 0; i < NBUF; ++i) {
        cudaMalloc(&w[i], bytes);
        cudaMemset(w[i], 0x5a, bytes);
    }
    cudaMalloc(&dst, 1 << 30);
    cudaMalloc(&sink, 4);
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    // device copy rate (1 GiB, read + write), the reference the issue's target uses
    uint4* src;
    cudaMalloc(&src, 1 << 30);
    cudaMemcpy(dst, src, 1 << 30, cudaMemcpyDeviceToDevice);
    cudaEventRecord(a);
    for (int r = 0; r < 5; ++r) cudaMemcpy(dst, src, 1 << 30, cudaMemcpyDeviceToDevice);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    const double copy = 2.0 * 5 * (1 << 30) / (ms * 1e-3) / 1e12;
    printf("device copy %.2f TB/s (read + write)\n", copy);
    const char* names[3] = {"tile-major (prepared layout)", "group-major (16 tiles)", "linear"};
    dim3 grid(TILES / (W * T), SPLITS);
    for (int layout = 0; layout < 3; ++layout)
        for (int nc = 0; nc < 2; ++nc) {
            auto k = nc ? probe<1> : probe<0>;
            for (int r = 0; r < NBUF; ++r) k<<<grid, 32 * W>>>(w[r], layout, sink);
            cudaEventRecord(a);
            const int reps = 50;
            for (int r = 0; r < reps; ++r) k<<<grid, 32 * W>>>(w[r % NBUF], layout, sink);
            cudaEventRecord(b);
            cudaEventSynchronize(b);
            cudaEventElapsedTime(&ms, a, b);
            const double us = ms * 1e3 / reps, tbs = bytes / (us * 1e-6) / 1e12;
            printf("%-30s %-26s %7.1f us  %5.2f TB/s  %3.0f%% of copy\n", names[layout],
                   nc ? "ld.global.nc.L1::no_allocate" : "ld.global", us, tbs, 100 * tbs / copy);
        }
    const cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) { printf("CUDA error: %s\n", cudaGetErrorString(e)); return 1; }
    return 0;
}
