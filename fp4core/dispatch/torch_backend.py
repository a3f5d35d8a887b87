"""The built-in ``torch`` backend: exact dequantization, then ``torch.matmul``.

It is the correctness reference and the fallback that works everywhere torch does, for FP4
activations (``mm_fp4``) and plain bf16/fp16 ones (``mm_bf16_fp4``).
CPU: dequantize to float32 (exact), float32 matmul, alpha, cast. CUDA: dequantize to
bf16 (exact: an E2M1 value times an E4M3 or E8M0 scale has at most 6 significant bits),
cuBLAS bf16 GEMM with float32 output, alpha, cast. It allocates temporaries on every call,
so it is neither allocation-free nor fast; it is what ``auto`` falls back to.
"""

from __future__ import annotations

import torch

from fp4core import __version__
from fp4core.dispatch.hooks import BackendInfo, Support, hookimpl
from fp4core.formats.layouts import SfLayout
from fp4core.formats.quantize import dequantize


def _mm_fp32_out(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """a (m, k) @ b_t (k, n) with float32 output (no intermediate bf16 rounding on CUDA)."""
    if a.is_cuda and a.dtype != torch.float32:
        try:
            return torch.mm(a, b_t, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # older torch: bf16 result, one extra rounding
            return torch.mm(a, b_t).float()
    return torch.mm(a, b_t)


class TorchBackend:
    """Dequantize + matmul. See the module docstring."""

    @hookimpl
    def backend_info(self) -> BackendInfo:
        return BackendInfo(
            name="torch", version=__version__, package="fp4core",
            description="exact dequantization + torch.matmul (reference and fallback)",
            targets=("cpu", "cuda"), verified=("cpu", "cuda"), activations=("fp4", "bf16", "fp16"),
            priority={"decode": -100, "small": -100, "medium": -100, "large": -100})

    @hookimpl
    def supports(self, problem) -> Support:
        if problem.device.type not in ("cpu", "cuda"):
            return Support.no(f"device type {problem.device.type!r} is not supported")
        return Support.yes()

    @hookimpl
    def run(self, problem, operands, out) -> None:
        nv = problem.fmt.value == "nvfp4"
        work = torch.float32 if not operands.b.is_cuda else torch.bfloat16
        if problem.act_dtype is torch.float16 and operands.b.is_cuda:
            # fp16 activations keep their 10-bit mantissa: an NVFP4 weight is exact in fp16
            # (|w| <= 6 * 448); MXFP4's E8M0 scales may not fit it, so fp32 there
            work = torch.float16 if nv else torch.float32
        if problem.act_dtype is not None:  # weight-only: A is already (m, k) bf16/fp16
            a = operands.a.to(work)
        else:
            a = dequantize(operands.a, operands.a_scale, use_nvfp4=nv,
                           sfLayout=problem.a_sf_layout, dtype=work)
        b = dequantize(operands.b, operands.b_scale, use_nvfp4=nv,
                       sfLayout=SfLayout.layout_128x4, dtype=work)
        acc = _mm_fp32_out(a, b.t())
        if operands.alpha is not None:
            acc = acc * operands.alpha.reshape(())
        out.copy_(acc)
