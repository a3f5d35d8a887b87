"""The tactics (kernel configurations) the tuner times, best guess first: ``TritonTactic``.
Pure Python: importable without Triton or a GPU.
"""

from __future__ import annotations

import dataclasses

from fp4core import Problem, Tactic


@dataclasses.dataclass(frozen=True)
class TritonTactic(Tactic):
    """One configuration of the Triton GEMM kernel; checked when made (ValueError naming the
    field).

    Fields:
        bm, bn, bk: tile sizes in values (rows of A, rows of B, K per step); powers of two
            >= 16, ``bk`` >= 32 (one MXFP4 block).
        warps: warps per program (1, 2, 4, 8 or 16).
        stages: software-pipelining depth (>= 1).
        split_k: K ranges reduced by a second kernel (>= 1; the launcher lowers it to a
            divisor of the K steps).
        group_m: row tiles sharing a weight tile in L2 (>= 1).
        swap: 1 = compute B @ A^T so the weight rows fill the MMA's M side (small M).
        a16: 1 = dequantize A once into a cached fp16/bf16 workspace by a pre-pass kernel,
            so the GEMM decodes only the weight (large M).
        asm: 1 = decode with inline PTX, 4 bytes at a time; 0 = plain Triton, per byte.

    Labels read as the JSON dicts of earlier versions did (sorted ``field=value``, flags as
    0/1), e.g. ``a16=0,asm=1,bk=256,bm=16,bn=64,group_m=8,split_k=2,stages=4,swap=1,warps=4``.
    """

    bm: int = 128
    bn: int = 128
    bk: int = 128
    warps: int = 8
    stages: int = 3
    split_k: int = 1
    group_m: int = 8
    swap: int = 0
    a16: int = 0
    asm: int = 1

    def __post_init__(self):
        for key in ("bm", "bn", "bk"):
            v = getattr(self, key)
            if v < 16 or v & (v - 1):
                raise ValueError(f"fp4-triton tactic: {key} must be a power of two >= 16, got {v}")
        if self.bk < 32:
            raise ValueError(f"fp4-triton tactic: bk must be >= 32 (one MXFP4 block), got {self.bk}")
        if self.split_k < 1 or self.group_m < 1 or self.warps not in (1, 2, 4, 8, 16) or self.stages < 1:
            raise ValueError(f"fp4-triton tactic: bad split_k/group_m/warps/stages in {self!r}")


#: SM count assumed where the device does not say (an H100 SXM has 132).
DEFAULT_SMS = 132


def auto_split(problem: Problem, bm: int, bn: int, bk: int, ctas_per_sm: int | None = None) -> int:
    """Split K until the grid covers the SMs about ``ctas_per_sm`` times (2 for M <= 64, else
    1: the fp32 partials cost M*N*4 bytes per split), keeping at least 4 K steps per split;
    prefer a divisor of the step count (no tail masks)."""
    m = problem.m or 1
    if ctas_per_sm is None:
        ctas_per_sm = 2 if m <= 64 else 1
    tiles = -(-m // bm) * -(-problem.n // bn)
    steps = -(-problem.k // bk)
    want = max(1, min(steps // 4, round((problem.device.sm_count or DEFAULT_SMS) * ctas_per_sm / tiles)))
    for s in range(want, 0, -1):
        if steps % s == 0 and s * 2 > want:
            return s
    return want


def _t(problem: Problem, bm, bn, bk, warps, stages, swap=0, split=None, group_m=8, a16=0,
       asm=1) -> TritonTactic:
    if problem.act_dtype is not None:
        a16 = 0  # weight-only: A is already bf16/fp16, no pre-pass
    if split is None:
        split = auto_split(problem, bm, bn, bk) if (problem.m or 1) <= 256 and not a16 else 1
    return TritonTactic(bm=bm, bn=bn, bk=bk, warps=warps, stages=stages, split_k=split,
                        group_m=group_m, swap=swap, a16=a16, asm=asm)


def tactics_for(problem: Problem) -> list[TritonTactic]:
    """Tactics worth timing for ``problem``, best guess first.

    Chosen from the kernels' SASS on sm_90a (no spills; instruction mix per K step) and
    the H100 runs recorded in docs/benchmarks.md. Small M: swap-AB (the decoded weight is
    the MMA's register operand, M is its N side) with split-K to fill the SMs. Large M: A
    decoded once by the pre-pass (``a16``) so the GEMM loop decodes only the weight.
    """
    p, m = problem, problem.m or 1
    if m <= 16:
        cands = [_t(p, 16, 64, 256, 4, 4, swap=1), _t(p, 16, 128, 256, 4, 4, swap=1),
                 _t(p, 16, 64, 128, 4, 5, swap=1), _t(p, 16, 128, 128, 4, 4, swap=1),
                 _t(p, 16, 64, 256, 4, 4, swap=1, split=1)]
    elif m <= 64:
        bm = 32 if m <= 32 else 64
        cands = [_t(p, bm, 128, 128, 4, 4, swap=1), _t(p, bm, 64, 256, 4, 4, swap=1),
                 _t(p, bm, 128, 128, 8, 4, swap=1), _t(p, 64, 128, 128, 4, 4),
                 _t(p, bm, 128, 128, 4, 4, swap=1, split=1)]
    elif m <= 256:
        bm = 128 if m <= 128 else 256
        cands = [_t(p, bm, 128, 128, 8, 3, swap=1), _t(p, bm, 128, 64, 8, 4, swap=1),
                 _t(p, 64, 128, 128, 4, 4), _t(p, 128, 128, 128, 8, 3, split=1),
                 _t(p, bm, 128, 128, 8, 3, swap=1, split=1)]
    elif m <= 1024:
        cands = [_t(p, 256, 128, 64, 8, 3, a16=1), _t(p, 128, 128, 128, 8, 3, swap=1, a16=1),
                 _t(p, 128, 256, 64, 8, 3, swap=1, a16=1), _t(p, 128, 256, 64, 8, 3),
                 _t(p, 128, 128, 128, 8, 3)]
    else:
        cands = [_t(p, 256, 128, 64, 8, 3, a16=1), _t(p, 256, 128, 64, 8, 4, a16=1),
                 _t(p, 128, 256, 64, 8, 3, swap=1, a16=1), _t(p, 128, 128, 128, 8, 3, swap=1, a16=1),
                 _t(p, 128, 256, 64, 8, 3)]
    out = []
    for c in cands:
        if c not in out:
            out.append(c)
    return out
