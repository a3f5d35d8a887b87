"""The ``triton`` backend's hooks (entry point ``fp4core.backends: triton``)."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util

import torch

import fp4core
from fp4core import BackendInfo, Operands, Problem, SfLayout, Support

from . import __version__
from .tactics import TritonTactic, tactics_for

#: Oldest Triton measured to compile these kernels (tl.join, FP8 E4M3 bitcasts).
MIN_TRITON = (3, 2)
#: FP8 E4M3 conversions in Triton need SM89+ (Ada, Hopper, Blackwell).
MIN_SM = 89


@functools.lru_cache(maxsize=1)
def triton_version() -> tuple[int, ...] | None:
    """Installed Triton's (major, minor), or None when it is not installed."""
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        text = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:  # e.g. a source build
        import triton
        text = triton.__version__
    return tuple(int(p) for p in text.split("+")[0].split(".")[:2] if p.isdigit())


class TritonBackend:
    """FP4 GEMM in Triton: E2M1 unpacking and block scaling in-kernel, tensor-core ``tl.dot``."""

    @fp4core.hookimpl
    def backend_info(self) -> BackendInfo:
        return BackendInfo(
            name="triton", version=__version__, package="fp4-triton",
            description="Triton kernel: in-kernel FP4 dequantization + fp16/bf16 tl.dot, split-K for small M",
            targets=("sm89", "sm90a", "sm100a", "sm120a"), verified=("sm90a",),
            priority={"decode": 10, "small": 35, "medium": 40, "large": 25},
            tactic_type=TritonTactic,
            # weight-only (W4A16): checked on an H100 (2026-12-06), 1.1-1.7x bf16 at M <= 16
            activations=("fp4", "bf16", "fp16"))

    @fp4core.hookimpl
    def supports(self, problem: Problem) -> Support:
        dev = problem.device
        if not dev.is_cuda:
            return Support.no(f"needs a CUDA device (the problem is on {dev.type})")
        if dev.sm < MIN_SM:
            return Support.no(f"needs SM{MIN_SM}+ (FP8 E4M3 conversions), device is sm_{dev.sm}")
        ver = triton_version()
        if ver is None:
            return Support.no("Triton is not installed (it ships with CUDA builds of torch; "
                              "or pip install triton)")
        if ver < MIN_TRITON:
            return Support.no(f"needs Triton >= {'.'.join(map(str, MIN_TRITON))}, "
                              f"found {'.'.join(map(str, ver))}")
        if problem.act_dtype is torch.float16 and problem.fmt.block_size == 32:
            return Support.no("MXFP4 with fp16 activations: the decoded weight (E8M0 scales) may not fit "
                              "fp16, and bf16 would round the activations")
        if problem.a_sf_layout not in (SfLayout.layout_128x4, SfLayout.layout_8x4):
            return Support.no(f"A scales must be 128x4 or 8x4, got {problem.a_sf_layout.value}")
        scale_bytes = -(-problem.n // 128) * 128 * -(-problem.k // (4 * problem.block_size)) * 4
        if scale_bytes >= 2**31:
            return Support.no(f"B's scale matrix has {scale_bytes} bytes; the kernel indexes "
                              f"scales with 32-bit offsets (< 2^31)")
        return Support.yes()

    @fp4core.hookimpl
    def tactics(self, problem: Problem) -> list[TritonTactic]:
        return tactics_for(problem)

    @fp4core.hookimpl
    def run(self, problem: Problem, operands: Operands, tactic: TritonTactic, out) -> None:
        from .launch import launch
        launch(problem, operands, tactic, out)
