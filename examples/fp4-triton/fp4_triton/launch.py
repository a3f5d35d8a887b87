"""Launching the Triton kernels: grid, split-K workspace, constexpr flags.

Per call: one GEMM launch (plus one small reduction launch for split-K) on the current
stream. No host synchronisation; the only allocation is the split-K workspace, made once
per device and grown (never shrunk) the first time a larger one is needed -- run each
shape once before capturing it in a CUDA graph (tuning does this).
"""

from __future__ import annotations

import functools

import torch

from fp4core import Fp4Format, Operands, Problem, SfLayout

from .tactics import normalize

_REDUCE_BLOCK = 1024
_workspaces: dict[tuple, torch.Tensor] = {}


@functools.lru_cache(maxsize=1)
def kernels():
    """The Triton kernel module (imported on first use: importing it imports Triton)."""
    from . import kernels as k
    return k


def workspace(device: torch.device, numel: int) -> torch.Tensor:
    """A cached fp32 buffer of at least ``numel`` elements on ``device``."""
    key = (device.type, device.index)
    buf = _workspaces.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=torch.float32, device=device)
        _workspaces[key] = buf
    return buf


def launch(problem: Problem, ops: Operands, tactic: dict, out: torch.Tensor) -> None:
    """out (M, N) = alpha * dequant(ops.a) @ dequant(ops.b)^T with ``tactic`` (see tactics.py)."""
    m, n, k = problem.m, problem.n, problem.k
    if m == 0:
        return
    t = normalize(tactic)
    k_mod = kernels()
    bm, bn, bk, split = t["bm"], t["bn"], t["bk"], t["split_k"]
    block = problem.fmt.block_size
    ctiles = -(-(k // block) // 4)
    steps = -(-k // bk)
    split = max(1, min(split, steps))
    while steps % split:  # the kernel gives every split the same number of K steps
        split -= 1
    even_k = k % bk == 0 and steps % split == 0
    has_alpha = ops.alpha is not None
    alpha = ops.alpha if has_alpha else out  # never read when HAS_ALPHA is False
    target = out if split == 1 else workspace(out.device, split * m * n)
    grid = (-(-m // bm) * -(-n // bn), split)
    k_mod.fp4_gemm_kernel[grid](
        ops.a, ops.a_scale, ops.b, ops.b_scale, alpha, target,
        m, n, k, ctiles, ctiles,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=t["group_m"], SPLIT_K=split,
        NVFP4=problem.fmt is Fp4Format.NVFP4,
        A_SF_8X4=problem.a_sf_layout is SfLayout.layout_8x4,
        HAS_ALPHA=has_alpha, SWAP_AB=bool(t["swap"]), EVEN_K=even_k,
        num_warps=t["warps"], num_stages=t["stages"])
    if split > 1:
        mn = m * n
        k_mod.splitk_reduce_kernel[(-(-mn // _REDUCE_BLOCK),)](
            target, alpha, out, mn, SPLIT_K=split, HAS_ALPHA=has_alpha, BLOCK=_REDUCE_BLOCK,
            num_warps=4)
