// Programmatic dependent launch (PDL, SM90+) for fp4core kernels: the device side and a host
// launch helper. Every fp4core JIT build has this folder on its include path:
//     #include "fp4core/pdl.cuh"
//
// A kernel launched with PDL (launch_pdl(..., pdl = true)) may start while the kernel ahead of
// it on the stream still runs. Until it calls pdl_wait() it must not read anything another
// kernel may write (activations, scales, alpha, workspaces, counters) nor write anything
// (its output may still be read by the kernel ahead). Index math and an L2 prefetch
// (prefetch.global.L2: no data returns) are always fine. pdl_wait() returns once the kernel
// ahead has finished and its writes are visible; without PDL (or below SM90) it is a no-op.
//
// Reading the prepared weight itself before the wait (into registers or shared memory) is
// safe only where the kernel ahead is always one of ours that calls pdl_launch_dependents()
// after its own pdl_wait(): then this kernel starts only after everything before that one
// has finished, the kernel that prepared the weight included. fp4-cutlass's GEMM relies on
// this (its pre-pass always runs first); fp4-trtllm's kernels, which may directly follow a
// prepare, only prefetch into L2.
//
// pdl_launch_dependents() lets the next PDL-launched kernel be scheduled once every CTA of
// this grid has called it or exited: its CTAs then take SM room that this grid leaves free and
// wait in their own pdl_wait(). Call it after pdl_wait(), never before: the rule above needs it.
#pragma once
#include <cuda_runtime.h>

#include <utility>

namespace fp4core {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), with the programmatic-stream-serialization
// attribute when `pdl` (the caller asks fp4core.kit.pdl.enabled(): SM90+ only) and, when
// `cluster_x` > 1, thread-block clusters of that many CTAs along x. Returns the launch's
// cudaError_t (and leaves no error pending for cudaGetLastError).
template <typename... KArgs, typename... Args>
cudaError_t launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       bool pdl, unsigned cluster_x, Args&&... args) {
    cudaLaunchAttribute attr[2];
    unsigned n = 0;
    if (pdl) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n].val.programmaticStreamSerializationAllowed = 1;
        ++n;
    }
    if (cluster_x > 1) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = cluster_x;
        attr[n].val.clusterDim.y = 1;
        attr[n].val.clusterDim.z = 1;
        ++n;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = n;
    const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
    // A failed launch is also the thread's "last error": clear it, the caller reports `e`, and a
    // later cudaGetLastError (torch's launch checks) must not report it again.
    if (e != cudaSuccess) cudaGetLastError();
    return e;
}

}  // namespace fp4core
