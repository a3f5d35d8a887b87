// CUTLASS block-scaled FP4 GEMM (Blackwell: SM100a datacenter, SM120a GeForce/workstation),
// out (m, n) = alpha * A (m, k) * B (n, k)^T with NVFP4 (E4M3 scale / 16) or MXFP4 (E8M0 / 32)
// operands and 128x4-swizzled scale factors (CUTLASS's Sm1xxBlkScaledConfig layout, the same
// bytes as fp4core.layouts 128x4 / FlashInfer's default).
//
// Built from CUTLASS 4.x's documented collective builders for OpClassBlockScaledTensorOp.
// NOT VERIFIED ON HARDWARE: we have no Blackwell GPU; this file is compile-checked only.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/sm100_blockscaled_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

namespace fp4c_bw {

using namespace cute;

template <class ArchTag, class ElementIn, class ElementOut, class TileShape, class ClusterShape>
struct BlockScaledGemm {
  using ElementA = ElementIn;  // cutlass::nv_float4_t<float_e2m1_t> or mx_float4_t<float_e2m1_t>
  using ElementB = ElementIn;
  using LayoutA = cutlass::layout::RowMajor;     // A (m, k), K contiguous
  using LayoutB = cutlass::layout::ColumnMajor;  // B^T (k, n) column-major == B (n, k) row-major
  using ElementD = ElementOut;
  using ElementC = void;                         // no source operand: D = alpha * A B^T
  using LayoutD = cutlass::layout::RowMajor;
  static constexpr int kAlignIn = 32;            // 32 FP4 values = 16 bytes
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;
  using Accum = float;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      ArchTag, cutlass::arch::OpClassBlockScaledTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, Accum, Accum,
      ElementC, LayoutD, kAlignD, ElementD, LayoutD, kAlignD,
      cutlass::epilogue::collective::EpilogueScheduleAuto>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      ArchTag, cutlass::arch::OpClassBlockScaledTensorOp, ElementA, LayoutA, kAlignIn, ElementB, LayoutB,
      kAlignIn, Accum, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::gemm::collective::KernelScheduleAuto>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue, void>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using Config = typename Kernel::CollectiveMainloop::Sm1xxBlkScaledConfig;

  static typename Gemm::Arguments arguments(const void* a, const void* a_sf, const void* b, const void* b_sf,
                                            const float* alpha, void* out, int m, int n, int k) {
    using DataA = typename ElementA::DataType;
    using ScaleA = typename ElementA::ScaleFactorType;
    auto stride_a = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, {m, k, 1});
    auto stride_b = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, {n, k, 1});
    auto stride_d = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, {m, n, 1});
    auto layout_sfa = Config::tile_atom_to_shape_SFA(cute::make_shape(m, n, k, 1));
    auto layout_sfb = Config::tile_atom_to_shape_SFB(cute::make_shape(m, n, k, 1));
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, 1},
        {static_cast<const DataA*>(a), stride_a, static_cast<const DataA*>(b), stride_b,
         static_cast<const ScaleA*>(a_sf), layout_sfa, static_cast<const ScaleA*>(b_sf), layout_sfb},
        {{}, nullptr, stride_d, static_cast<ElementD*>(out), stride_d}};
    // alpha read on the device (graph safe); beta = 0 with no source.
    args.epilogue.thread.alpha = 1.f;
    args.epilogue.thread.alpha_ptr = alpha;
    args.epilogue.thread.beta = 0.f;
    return args;
  }

  // Returns 0 on success, 1 + cutlass::Status on a CUTLASS refusal, or a cudaError_t + 1000.
  static int run(const void* a, const void* a_sf, const void* b, const void* b_sf, const float* alpha,
                 void* out, int m, int n, int k, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    Gemm gemm;
    auto args = arguments(a, a_sf, b, b_sf, alpha, out, m, n, k);
    if (Gemm::get_workspace_size(args) > workspace_bytes) return 1 + (int)cutlass::Status::kErrorWorkspaceNull;
    cutlass::Status st = gemm.can_implement(args);
    if (st != cutlass::Status::kSuccess) return 1 + (int)st;
    st = gemm.initialize(args, workspace, stream);
    if (st != cutlass::Status::kSuccess) return 1 + (int)st;
    st = gemm.run(stream);
    if (st != cutlass::Status::kSuccess) return 1 + (int)st;
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? 0 : 1000 + (int)e;
  }

  static size_t workspace_size(int m, int n, int k) {
    return Gemm::get_workspace_size(arguments(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, m, n, k));
  }
};

using NvFp4 = cutlass::nv_float4_t<cutlass::float_e2m1_t>;
using MxFp4 = cutlass::mx_float4_t<cutlass::float_e2m1_t>;

}  // namespace fp4c_bw

// One extern "C" entry per (format, output dtype, tile) variant:
//   int NAME(a, a_sf, b, b_sf, alpha, out, m, n, k, workspace, workspace_bytes, stream)
//   size_t NAME_workspace(m, n, k)
#define FP4C_BW_ENTRY(NAME, ARCH, IN, OUT, TILE, CLUSTER)                                                   \
  extern "C" int NAME(const void* a, const void* a_sf, const void* b, const void* b_sf, const float* alpha, \
                      void* out, int m, int n, int k, void* ws, size_t ws_bytes, cudaStream_t stream) {      \
    return fp4c_bw::BlockScaledGemm<ARCH, IN, OUT, TILE, CLUSTER>::run(a, a_sf, b, b_sf, alpha, out, m, n, k, \
                                                                        ws, ws_bytes, stream);              \
  }                                                                                                         \
  extern "C" size_t NAME##_workspace(int m, int n, int k) {                                                 \
    return fp4c_bw::BlockScaledGemm<ARCH, IN, OUT, TILE, CLUSTER>::workspace_size(m, n, k);                 \
  }
