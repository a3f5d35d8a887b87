"""Random but valid FP4 operands for a problem, made directly as bytes on the device.

Used by the tuner (rotating input sets), the benchmark and tests. Codes are uniform over
all 16 E2M1 codes; scales are drawn from 2^-2..2^2 (NVFP4: every E4M3 mantissa in that
exponent range; MXFP4: the five powers of two), so products stay well inside bf16 range
and no scale is NaN. Padding bytes of swizzled scales are zero, as the quantizers write.
"""

from __future__ import annotations

import torch

from fp4core.formats.fp4 import Fp4Format
from fp4core.formats.layouts import SfLayout, padded_scale_shape, scale_offsets
from fp4core.dispatch.problem import Operands, Problem


def _random_bytes(shape, device, generator, low: int = 0, high: int = 256) -> torch.Tensor:
    return torch.randint(low, high, shape, dtype=torch.uint8, device=device, generator=generator)


def random_scale_bytes(rows: int, k: int, fmt: Fp4Format, layout: SfLayout | str,
                       device, generator=None) -> torch.Tensor:
    """Flat uint8 scale bytes for a rows x (k / block) matrix stored in ``layout``."""
    layout = SfLayout.parse(layout)
    cols = k // fmt.block_size
    prow, pcol = padded_scale_shape(rows, cols, layout)
    if fmt is Fp4Format.NVFP4:
        exp = _random_bytes((rows, cols), device, generator, 5, 10)   # E4M3 2^-2 .. 2^2
        man = _random_bytes((rows, cols), device, generator, 0, 8)
        vals = (exp << 3) | man
    else:
        vals = _random_bytes((rows, cols), device, generator, 125, 130)  # E8M0 2^-2 .. 2^2
    flat = torch.zeros(prow * pcol, dtype=torch.uint8, device=device)
    flat[scale_offsets(rows, cols, layout, device).reshape(-1)] = vals.reshape(-1)
    return flat


def random_weight(n: int, k: int, fmt: Fp4Format, device, generator=None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(b uint8 (n, k/2) row-major, flat 128x4 scale bytes)."""
    b = _random_bytes((n, k // 2), device, generator)
    return b, random_scale_bytes(n, k, fmt, SfLayout.layout_128x4, device, generator)


def random_operands(problem: Problem, device=None, generator=None, alpha: float = 0.25) -> Operands:
    """Canonical Operands for ``problem`` (M rows of A; alpha when the problem has one). A
    weight-only problem gets a normal random (M, K) activation of ``problem.act_dtype`` and no
    A scales."""
    device = device or (f"cuda:{problem.device.index}" if problem.device.is_cuda else "cpu")
    m = problem.m or 1
    if problem.act_dtype is not None:
        a = torch.randn((m, problem.k), device=device, generator=generator).to(problem.act_dtype)
        a_sf = None
    else:
        a = _random_bytes((m, problem.k // 2), device, generator)
        a_sf = random_scale_bytes(m, problem.k, problem.fmt, problem.a_sf_layout, device, generator)
    b, b_sf = random_weight(problem.n, problem.k, problem.fmt, device, generator)
    al = torch.full((1,), alpha, dtype=torch.float32, device=device) if problem.has_alpha else None
    return Operands(a, a_sf, b, b_sf, al)


def operand_bytes(problem: Problem) -> int:
    """Bytes one call reads and writes at the minimum (A, B, their scales, the output)."""
    m = problem.m or 1
    per_value = 0.5 + 1.0 / problem.block_size  # 0.5 B/value + 1 B/block
    a_bytes = m * problem.k * (per_value if problem.act_dtype is None else 2)
    return int(a_bytes + problem.n * problem.k * per_value + m * problem.n * 2)
