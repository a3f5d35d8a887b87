"""Launching the Triton kernels: grid, split-K workspace, constexpr flags.

Per call: one GEMM launch on the current stream, plus a reduction launch for split-K and a
dequantization pre-pass of A for ``a16`` tactics. No host synchronisation; the only
allocations are those two workspaces, made once per device and grown (never shrunk) the
first time a larger one is needed -- run each shape once before capturing it in a CUDA
graph (tuning does this).
"""

from __future__ import annotations

import functools

import torch

from fp4core import Fp4Format, Operands, Problem, SfLayout
from fp4core import kit

from .tactics import TritonTactic

_REDUCE_BLOCK = 1024
_DQ_ROWS, _DQ_K = 32, 256  # tile of the A pre-pass (rows, K values)


@functools.lru_cache(maxsize=1)
def kernels():
    """The Triton kernel module (imported on first use: importing it imports Triton)."""
    from . import kernels as k
    return k


def workspace(device: torch.device, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A buffer of ``numel`` elements of ``dtype`` on ``device`` (1-D). On CUDA a view of the
    core's grow-only device buffer for this dtype: a buffer it outgrew stays allocated, so a
    CUDA graph captured with it stays valid. Elsewhere (Triton's interpreter) a fresh tensor."""
    if device.type != "cuda":
        return torch.empty(numel, dtype=dtype, device=device)
    return kit.device_buffers(device).get(f"triton.{dtype}", numel, dtype)[:numel]


def launch(problem: Problem, ops: Operands, tactic: TritonTactic, out: torch.Tensor) -> None:
    """out (M, N) = alpha * dequant(ops.a) @ dequant(ops.b)^T with ``tactic`` (see tactics.py);
    for a weight-only problem ``ops.a`` is the (M, K) activation (``a16`` does not apply)."""
    m, n, k = problem.m, problem.n, problem.k
    if m == 0:
        return
    k_mod = kernels()
    bm, bn, bk, split = tactic.bm, tactic.bn, tactic.bk, tactic.split_k
    block = problem.fmt.block_size
    ctiles = -(-(k // block) // 4)
    steps = -(-k // bk)
    split = max(1, min(split, steps))
    while steps % split:  # the kernel gives every split the same number of K steps
        split -= 1
    even_k = k % bk == 0 and steps % split == 0
    has_alpha = ops.alpha is not None
    alpha = ops.alpha if has_alpha else out  # never read when HAS_ALPHA is False
    nvfp4 = problem.fmt is Fp4Format.NVFP4
    a_8x4 = problem.a_sf_layout is SfLayout.layout_8x4
    asm = bool(tactic.asm)
    a, a_scale = ops.a, ops.a_scale
    plain = problem.act_dtype is not None  # weight-only: A is the (M, K) activation itself
    if plain:
        a_scale = ops.b_scale  # never read with A_PLAIN
    elif tactic.a16:
        a = workspace(out.device, m * k, torch.float16 if nvfp4 else torch.bfloat16)
        k_mod.dequant_rows_kernel[(-(-m // _DQ_ROWS), -(-k // _DQ_K))](
            ops.a, ops.a_scale, a, m, k, ctiles, BLOCK_R=_DQ_ROWS, BLOCK_K=_DQ_K,
            NVFP4=nvfp4, SF_8X4=a_8x4, ASM=asm, num_warps=4)
    target = out if split == 1 else workspace(out.device, split * m * n)
    grid = (-(-m // bm) * -(-n // bn), split)
    k_mod.fp4_gemm_kernel[grid](
        a, a_scale, ops.b, ops.b_scale, alpha, target,
        m, n, k, ctiles, ctiles,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=tactic.group_m, SPLIT_K=split,
        NVFP4=nvfp4, A_SF_8X4=a_8x4, HAS_ALPHA=has_alpha, SWAP_AB=bool(tactic.swap),
        EVEN_K=even_k, ASM=asm, A_DENSE=bool(tactic.a16) and not plain, A_PLAIN=plain,
        num_warps=tactic.warps, num_stages=tactic.stages)
    if split > 1:
        mn = m * n
        k_mod.splitk_reduce_kernel[(-(-mn // _REDUCE_BLOCK),)](
            target, alpha, out, mn, SPLIT_K=split, HAS_ALPHA=has_alpha, BLOCK=_REDUCE_BLOCK,
            num_warps=4)
