"""fp4-cutlass: the CuTe/CUTLASS FP4 GEMM backend for fp4core (``backend="cutlass"``).

Hopper (SM90a): our own CuTe kernel — TMA-fed multi-stage pipeline, exact in-register FP4 ->
bf16 dequantization of the weight, WGMMA with fp32 accumulation. Blackwell (SM100a, SM120a):
CUTLASS's block-scaled FP4 GEMMs, compiled but not verified on hardware.

    import fp4core
    out = fp4core.mm_fp4(a_fp4, b_fp4, a_sf, b_sf, alpha, backend="cutlass")

Prebuild the kernels with ``fp4core build --arch sm_90a`` (or ``fp4core.build``).
"""

__version__ = "0.3.0"

__all__ = ["__version__"]
