// Read-bandwidth probe for issue 5's next step: can a streaming read of an FP4 weight the size
// of 28672 x 8192 (112 MiB here, 8 copies used in turn so L2 holds none) reach bf16 cuBLAS's
// ~4 TB/s when each CTA streams one contiguous range, and does it matter whether the bytes
// come by per-thread cp.async (16 B per lane, what the fp4-trtllm kernels do) or by one
// thread's TMA bulk copy (cp.async.bulk, sm_90)? No decode, no MMA: every thread reads one
// word of each landed stage so the copies cannot be skipped.
//
//   mode 0: cp.async.cg 16 B per thread, STAGES-deep ring, a CTA barrier per stage
//   mode 1: cp.async.bulk of the whole stage by thread 0 into an mbarrier-tracked ring
//
//   nvcc -O3 -arch=sm_90a -o /tmp/bulk_probe benchmarks/bulk_probe.cu && /tmp/bulk_probe
#include <cuda_runtime.h>
#include <cstdint>
#include <cstdio>

constexpr int STAGES = 4, THREADS = 128;

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

template <int MODE>
__global__ void __launch_bounds__(THREADS) probe(const uint8_t* __restrict__ src, size_t bytes, int stage_bytes,
                                                 uint32_t* sink) {
    extern __shared__ __align__(128) uint8_t ring[];
    __shared__ __align__(8) uint64_t bar[STAGES];
    const size_t per_cta = bytes / gridDim.x;  // host keeps it a multiple of stage_bytes
    const uint8_t* base = src + (size_t)blockIdx.x * per_cta;
    const int steps = (int)(per_cta / stage_bytes);
    const int tid = threadIdx.x;
    uint32_t acc = 0;
    auto issue = [&](int s, int step) {
        uint8_t* dst = ring + s * stage_bytes;
        const uint8_t* from = base + (size_t)step * stage_bytes;
        if (MODE == 0) {
            for (int off = tid * 16; off < stage_bytes; off += THREADS * 16)
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(dst + off)), "l"(from + off) : "memory");
            asm volatile("cp.async.commit_group;" ::: "memory");
        } else if (tid == 0) {
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(&bar[s])), "r"(stage_bytes) : "memory");
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                         ::"r"(smem_u32(dst)), "l"(from), "r"(stage_bytes), "r"(smem_u32(&bar[s])) : "memory");
        }
    };
    if (MODE == 1) {
        if (tid == 0)
            for (int s = 0; s < STAGES; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(&bar[s])));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        __syncthreads();
    }
    for (int s = 0; s < STAGES - 1 && s < steps; ++s) issue(s, s);
    if (MODE == 0)
        for (int s = steps; s < STAGES - 1; ++s) asm volatile("cp.async.commit_group;" ::: "memory");
    for (int step = 0; step < steps; ++step) {
        const int s = step % STAGES;
        if (MODE == 0) {
            asm volatile("cp.async.wait_group %0;" ::"n"(STAGES - 2) : "memory");
            __syncthreads();  // every thread's copies of this stage landed; the previous one is read
        } else {
            const uint32_t parity = (step / STAGES) & 1;
            uint32_t done = 0;
            while (!done)
                asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
                             : "=r"(done) : "r"(smem_u32(&bar[s])), "r"(parity) : "memory");
            __syncthreads();  // the previous stage is read by everyone before it is refilled
        }
        if (step + STAGES - 1 < steps) issue((step + STAGES - 1) % STAGES, step + STAGES - 1);
        else if (MODE == 0) asm volatile("cp.async.commit_group;" ::: "memory");
        acc ^= reinterpret_cast<const uint32_t*>(ring + s * stage_bytes)[tid];
    }
    if (acc == 0x12345678u) sink[0] = acc;  // never true for the fill below
}

int main() {
    const size_t bytes = (size_t)28672 * 8192 / 2;  // 112 MiB of packed FP4
    constexpr int NBUF = 8;
    uint8_t* w[NBUF];
    for (int i = 0; i < NBUF; ++i) { cudaMalloc(&w[i], bytes); cudaMemset(w[i], 0x5a, bytes); }
    uint32_t* sink; cudaMalloc(&sink, 4);
    uint8_t *a, *b; cudaMalloc(&a, 1 << 30); cudaMalloc(&b, 1 << 30);
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    float ms = 0;
    cudaMemcpy(b, a, 1 << 30, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e0);
    for (int r = 0; r < 5; ++r) cudaMemcpy(b, a, 1 << 30, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1); cudaEventSynchronize(e1); cudaEventElapsedTime(&ms, e0, e1);
    const double copy = 2.0 * 5 * (1 << 30) / (ms * 1e-3) / 1e12;
    printf("device copy %.2f TB/s (read + write)\n", copy);
    int sms = 0; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    const int stage_sizes[] = {2048, 8192, 16384, 32768};
    const int ctas_per_sm[] = {1, 2, 4};
    for (int mode = 0; mode < 2; ++mode)
        for (int st : stage_sizes)
            for (int c : ctas_per_sm) {
                const int smem = STAGES * st;
                if (smem * c > 220 * 1024) continue;
                auto k = mode ? probe<1> : probe<0>;
                cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
                const int grid = sms * c;
                const size_t used = bytes / ((size_t)grid * st) * ((size_t)grid * st);  // whole stages per CTA
                for (int r = 0; r < NBUF; ++r) k<<<grid, THREADS, smem>>>(w[r], used, st, sink);
                const int reps = 40;
                cudaEventRecord(e0);
                for (int r = 0; r < reps; ++r) k<<<grid, THREADS, smem>>>(w[r % NBUF], used, st, sink);
                cudaEventRecord(e1); cudaEventSynchronize(e1); cudaEventElapsedTime(&ms, e0, e1);
                const double us = ms * 1e3 / reps, tbs = used / (us * 1e-6) / 1e12;
                printf("%-22s stage %6d B  %d CTA/SM  %7.1f us  %5.2f TB/s  %3.0f%% of copy\n",
                       mode ? "cp.async.bulk (TMA)" : "cp.async 16 B/thread", st, c, us, tbs, 100 * tbs / copy);
            }
    const cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) { printf("CUDA error: %s\n", cudaGetErrorString(err)); return 1; }
    return 0;
}
