// SM120a (RTX 50xx / RTX PRO Blackwell) block-scaled FP4 GEMMs — compile-only, NOT VERIFIED ON
// HARDWARE. Tile 128x128x128, no cluster (GeForce parts have no multicast clusters).
#include "blockscaled_gemm.cuh"

using namespace cute;
using fp4c_bw::MxFp4;
using fp4c_bw::NvFp4;
using Sm120 = cutlass::arch::Sm120;
using T128 = Shape<_128, _128, _128>;
using C1 = Shape<_1, _1, _1>;

FP4C_BW_ENTRY(fp4c_sm120_nvfp4_bf16_128x128, Sm120, NvFp4, cutlass::bfloat16_t, T128, C1)
FP4C_BW_ENTRY(fp4c_sm120_nvfp4_fp16_128x128, Sm120, NvFp4, cutlass::half_t, T128, C1)
FP4C_BW_ENTRY(fp4c_sm120_mxfp4_bf16_128x128, Sm120, MxFp4, cutlass::bfloat16_t, T128, C1)
