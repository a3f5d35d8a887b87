"""Quantize one bf16 (M, K) activation to NVFP4 three times (for Nsight Compute to profile the
third launch): python benchmarks/quant_case.py [M K]   (default 8192 8192)

128x4 scales, a given global scale of 1. Run by the ``ncu`` step of benchmarks/suite.sh."""

import sys

import torch

import fp4core


def main(argv: list[str]) -> None:
    """Run the activation quantization kernel three times on random bf16 input of (M, K)."""
    m, k = (int(x) for x in argv[:2]) if len(argv) >= 2 else (8192, 8192)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    global_scale = torch.ones(1, device="cuda")
    for _ in range(3):
        fp4core.quantize_fp4(x, "nvfp4", "128x4", global_scale)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1:])
