// SM100a (B200/GB200) block-scaled FP4 GEMMs — compile-only, NOT VERIFIED ON HARDWARE.
// Tiles: 128x128x256 on one SM (cluster 1x1) and 256x128x256 on an SM pair (2SM MMA, cluster 2x1).
#include "blockscaled_gemm.cuh"

using namespace cute;
using fp4c_bw::MxFp4;
using fp4c_bw::NvFp4;
using Sm100 = cutlass::arch::Sm100;
using T128 = Shape<_128, _128, _256>;
using T256 = Shape<_256, _128, _256>;
using C1 = Shape<_1, _1, _1>;
using C2 = Shape<_2, _1, _1>;

FP4C_BW_ENTRY(fp4c_sm100_nvfp4_bf16_128x128, Sm100, NvFp4, cutlass::bfloat16_t, T128, C1)
FP4C_BW_ENTRY(fp4c_sm100_nvfp4_fp16_128x128, Sm100, NvFp4, cutlass::half_t, T128, C1)
FP4C_BW_ENTRY(fp4c_sm100_mxfp4_bf16_128x128, Sm100, MxFp4, cutlass::bfloat16_t, T128, C1)
FP4C_BW_ENTRY(fp4c_sm100_nvfp4_bf16_256x128, Sm100, NvFp4, cutlass::bfloat16_t, T256, C2)
