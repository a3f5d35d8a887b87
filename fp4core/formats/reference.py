"""The exact reference result and the error measure every correctness check uses."""

from __future__ import annotations

import torch

from fp4core.formats.layouts import SfLayout
from fp4core.dispatch.problem import Operands, Problem
from fp4core.formats.quantize import dequantize

#: A backend is correct when ||out - ref|| / ||ref|| is at most this (bf16/fp16 output).
TOLERANCE = 1e-2


def reference_mm(problem: Problem, operands: Operands, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """alpha * dequant(A) @ dequant(B)^T computed in ``dtype`` on the operands' device (A as
    given for a weight-only problem).

    ``operands`` must be canonical (not a backend's prepared layout). float64 is exact up to
    the final summation order; float32 is accurate to ~1e-6 relative and much faster on GPUs.
    """
    nv = problem.fmt.value == "nvfp4"
    if problem.act_dtype is not None:  # weight-only: A is the activation itself
        a = operands.a.to(dtype)
    else:
        a = dequantize(operands.a, operands.a_scale, use_nvfp4=nv, sfLayout=problem.a_sf_layout, dtype=dtype)
    b = dequantize(operands.b, operands.b_scale, use_nvfp4=nv, sfLayout=SfLayout.layout_128x4, dtype=dtype)
    if dtype == torch.float32 and a.is_cuda:
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference must not use TF32
        try:
            ref = a @ b.t()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
    else:
        ref = a @ b.t()
    if operands.alpha is not None:
        ref = ref * operands.alpha.to(dtype).reshape(())
    return ref


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf when ``out`` holds NaN/Inf (unwritten or broken)."""
    o = out.to(torch.float64)
    r = ref.to(device=o.device, dtype=torch.float64)
    if not bool(torch.isfinite(o).all()):
        return float("inf")
    denom = torch.linalg.vector_norm(r)
    diff = torch.linalg.vector_norm(o - r)
    if float(denom) == 0.0:
        return float(diff)
    return float(diff / denom)
