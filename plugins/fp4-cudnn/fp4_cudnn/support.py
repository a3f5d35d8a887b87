"""``supports``: which problems this backend runs, and a reason for every refusal.

Split into the environment checks (device, libraries; need the process) and
``problem_reason`` (capability, versions, layouts, dtypes, alignment), a pure function of the
problem and the cuDNN version so CPU tests can exercise every branch.
"""

from __future__ import annotations

import torch

from fp4core.formats.fp4 import Fp4Format
from fp4core.dispatch.hooks import Support
from fp4core.formats.layouts import SfLayout
from fp4core.dispatch.problem import Problem

from . import env

#: Which path serves a capability.
PATH_DEQUANT = "dequant+bf16"     # SM80-SM90 (and SM8x consumer parts)
PATH_NATIVE = "native-fp4"        # SM100+


def path_for(sm: int) -> str | None:
    """The path for compute capability ``sm`` (e.g. 90), or None below SM80."""
    if sm >= 100:
        return PATH_NATIVE
    if sm >= 80:
        return PATH_DEQUANT
    return None


def problem_reason(problem: Problem, cudnn_version: int) -> str:
    """Empty if the problem can run on ``problem.device`` with this cuDNN, else why not."""
    sm = problem.device.sm
    path = path_for(sm)
    if path is None:
        return (f"needs compute capability 8.0 or newer (bf16 tensor cores); {problem.device} "
                f"is sm_{sm}")
    if problem.out_dtype not in (torch.bfloat16, torch.float16):
        return f"output dtype {problem.out_dtype} is not supported (bfloat16 or float16)"
    if problem.a_sf_layout not in (SfLayout.layout_128x4, SfLayout.layout_8x4):
        return f"A scale layout {problem.a_sf_layout.value} is not supported (128x4 or 8x4)"
    if problem.act_dtype is not None:  # weight-only: the dequantized weight + the bf16 graph
        if problem.act_dtype is not torch.bfloat16:
            return (f"weight-only calls need bfloat16 activations (the bf16 matmul graph), got "
                    f"{problem.activation}")
        if path != PATH_DEQUANT:
            return f"weight-only calls run on SM80-SM90 only (the bf16 path); {problem.device} is sm_{sm}"
    if path == PATH_DEQUANT:
        if cudnn_version < env.MIN_CUDNN_DEQUANT_PATH:
            return (f"cuDNN {env.format_version(cudnn_version)} is too old: the bf16 matmul graph "
                    f"needs {env.format_version(env.MIN_CUDNN_DEQUANT_PATH)} or newer")
        if problem.n % 8:
            # The bf16 output rows (N elements) must be 16-byte aligned for cuDNN's matmul engines.
            return f"N = {problem.n} must be a multiple of 8 (16-byte aligned bf16 output rows)"
        return ""
    # Native block-scaled graph (SM100+).
    if problem.a_sf_layout is not SfLayout.layout_128x4:
        return ("8x4 A scales are not supported on SM100+: cuDNN's block-scaled graph reads "
                "scales in the F8_128x4 reordering only")
    need = env.MIN_CUDNN_NATIVE_SM100
    if sm >= 120 and problem.fmt is Fp4Format.MXFP4:
        need = env.MIN_CUDNN_NATIVE_SM120_MXFP4
    if cudnn_version < need:
        return (f"cuDNN {env.format_version(cudnn_version)} is too old for {problem.fmt.value} "
                f"block-scaled matmul on sm_{sm}: needs {env.format_version(need)} or newer")
    if problem.k % 32:
        # FP4 rows must start 16-byte aligned (32 values) for the block-scaled engines.
        return f"K = {problem.k} must be a multiple of 32 for the block-scaled FP4 graph"
    if problem.n % 8:
        return f"N = {problem.n} must be a multiple of 8 (16-byte aligned output rows)"
    return ""


def supports(problem: Problem) -> Support:
    """The ``supports`` hook: environment first (cheap, cached), then the problem."""
    if not problem.device.is_cuda:
        return Support.no(f"needs a CUDA device (got {problem.device})")
    if not torch.cuda.is_available():
        return Support.no("needs a CUDA device: torch.cuda is not available in this process")
    why = env.cudnn_problem()
    if why:
        return Support.no(why)
    version = env.cudnn_version()
    why = problem_reason(problem, version)
    if why:
        return Support.no(why)
    if path_for(problem.device.sm) == PATH_DEQUANT:
        why = env.triton_problem()
        if why:
            return Support.no(why)
        return Support.yes(f"fused FP4->bf16 dequantization + cuDNN {env.format_version(version)} "
                           f"bf16 matmul plans")
    return Support.yes(f"cuDNN {env.format_version(version)} block-scaled FP4 graph "
                       f"(not verified on hardware)")
