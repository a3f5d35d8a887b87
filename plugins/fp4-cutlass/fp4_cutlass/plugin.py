"""The ``cutlass`` backend: hooks for fp4core (entry point ``fp4core.backends: cutlass``)."""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from fp4core import kit
from fp4core.kit import jit
from fp4core.formats.fp4 import Fp4Format
from fp4core.dispatch.hooks import BackendInfo, Support, Tactic, hookimpl
from fp4core.formats.layouts import SfLayout
from fp4core.dispatch.problem import Operands, Problem

from . import __version__, blackwell, launcher

#: K must be a multiple of this: TMA needs 16-byte weight rows (K/2 bytes) and the kernel's
#: scale handling works on whole 64-value halves of its 128-wide stages.
K_ALIGN = 64


@dataclasses.dataclass(frozen=True)
class CutlassTactic(Tactic):
    """One compiled variant of the SM90 kernel and its split-K.

    Fields:
        tm: activation rows per CTA (wgmma N), one of ``launcher.TM_CHOICES``; None = the
            smallest choice >= M.
        bn: weight rows per CTA, one of ``launcher.BN_CHOICES``.
        split_k: CTAs splitting K (grid z) plus a reduce kernel; 0 = automatic
            (``auto_splits``); clamped to the K stages.
        cluster: CTAs per thread-block cluster along N sharing the activation tile by TMA
            multicast, one of ``launcher.CLUSTER_CHOICES``.
        deep: 1 = two wgmma batches in flight per warpgroup (tm <= ``launcher.DEEP_MAX_TM``
            only), 0 = one.

    ``tactics`` sets every field, so labels read as the JSON dicts of earlier versions did,
    e.g. ``bn=128,cluster=1,deep=0,split_k=1,tm=256``.
    """

    tm: int | None = None
    bn: int = 128
    split_k: int = 0
    cluster: int = 1
    deep: int = 0


@functools.lru_cache(maxsize=1)
def _toolchain_problem() -> str:
    """Why the kernels cannot be built here, or "" when nvcc and the headers are present."""
    if kit.nvcc_missing():
        return kit.nvcc_missing()
    if jit.cutlass_include_dir() is None:
        return "CUTLASS/CuTe headers not found: pip install nvidia-cutlass"
    return ""


def auto_splits(problem: Problem, tm: int, bn: int, cluster: int = 1) -> int:
    """Split K over CTAs when one wave of output tiles leaves SMs idle: aim at ~1 CTA per SM,
    keep at least 8 stages (1024 values of K) per split."""
    m = problem.m or 1
    tiles = math.ceil(math.ceil(problem.n / bn) / cluster) * cluster * math.ceil(m / tm)
    sms = kit.sm_count(problem.device.index)
    if tiles >= 0.75 * sms:
        return 1
    chunks = launcher.padded_k(problem.k) // launcher.BK
    return max(1, min(chunks // 8, round(sms / tiles)))


def _tm_for(m: int) -> int:
    for tm in launcher.TM_CHOICES:
        if m <= tm:
            return tm
    return launcher.TM_CHOICES[-1]


class CutlassBackend:
    """CuTe FP4 GEMM: Hopper in-kernel dequantization + WGMMA; Blackwell block-scaled CUTLASS."""

    @hookimpl
    def backend_info(self) -> BackendInfo:
        return BackendInfo(
            name="cutlass", version=__version__, package="fp4-cutlass",
            description="CuTe SM90a TMA+WGMMA kernel with in-register FP4 dequant; CUTLASS "
                        "block-scaled SM100a/SM120a GEMMs (compiled, not verified on hardware)",
            targets=("sm90a", "sm100a", "sm120a"), verified=("sm90a",),
            # Untuned order, from the tuned H100 sweep of 2026-11-25 (docs/benchmarks.md): as
            # fast as trtllm at M <= 16 (which still leads there on a prepared weight), the
            # fastest backend at M = 17..128 and from M = 2048 up. Weight-only (bf16 activations
            # permuted by a copy-only pre-pass into the same GEMM): within 2-4 % of trtllm's W16
            # kernel at M = 1 and 1.4-1.8x faster than it at M = 16 (H100, 2026-12-06), so it
            # leads the whole decode regime until tuned.
            priority={"decode": 45, "small": 45, "medium": 60, "large": 60, "w4a16:decode": 55},
            tactic_type=CutlassTactic,
            activations=("fp4", "bf16"))

    @hookimpl
    def supports(self, problem: Problem) -> Support:
        dev = problem.device
        if not dev.is_cuda:
            return Support.no(f"needs a CUDA device (the problem is on {dev.type})")
        if dev.sm in (100, 103, 120, 121):
            return Support.no(blackwell.NOT_VERIFIED.format(sm=dev.sm))
        if dev.sm != 90:
            return Support.no(f"the Hopper kernel needs SM90 (wgmma/TMA, sm_90a); device is sm_{dev.sm}")
        if problem.k % K_ALIGN:
            return Support.no(f"K must be a multiple of {K_ALIGN} (16-byte TMA rows of the packed "
                              f"weight, whole 64-value scale groups), got K = {problem.k}")
        if problem.act_dtype is not None and problem.act_dtype != torch.bfloat16:
            return Support.no(f"weight-only calls take bfloat16 activations (bf16 wgmma), got {problem.activation}")
        if problem.a_sf_layout not in (SfLayout.layout_128x4, SfLayout.layout_8x4):
            return Support.no(f"A scales must be 128x4 or 8x4, got {problem.a_sf_layout.value}")
        m = problem.m or 1
        if launcher.padded_k(problem.k) * m >= 2**31 or problem.n * m >= 2**31:
            return Support.no("sizes past 2^31 elements are not supported (32-bit indices)")
        why = _toolchain_problem()
        if why:
            return Support.no(why)
        return Support.yes()

    @hookimpl
    def tactics(self, problem: Problem) -> list[CutlassTactic]:
        m = problem.m or 1
        sms = kit.sm_count(problem.device.index)
        tm_cap = _tm_for(m)
        # (tm, bn) from the most work per CTA to the least; measured on H100 (README): the
        # biggest tile that still gives ~a full wave of CTAs wins, else split K.
        shapes = [(tm, bn) for tm, bn in ((256, 128), (128, 128), (256, 64), (128, 64), (64, 128),
                                          (64, 64), (32, 128), (32, 64), (16, 128), (16, 64))
                  if tm <= tm_cap and (tm, bn) not in launcher.UNBUILT_TILES]
        def tiles(tm, bn):
            return math.ceil(problem.n / bn) * math.ceil(m / tm)
        full = [sh for sh in shapes if tiles(*sh) >= 0.9 * sms]
        ranked = full[:2] + [sh for sh in shapes if sh not in full[:2]]
        if not full:  # too few tiles at any shape: the most CTAs first, with split-K
            ranked = sorted(shapes, key=lambda sh: -tiles(*sh))
        out: list[CutlassTactic] = []
        for rank, (tm, bn) in enumerate(ranked[:3]):
            s = auto_splits(problem, tm, bn)
            deeps = (0, 1) if tm <= launcher.DEEP_MAX_TM else (0,)  # deep measured slower (README)
            for splits in dict.fromkeys([1, s] if full else [s, 1]):
                for deep in deeps:
                    for cl in ((1, 2) if rank == 0 else (1,)):
                        tac = CutlassTactic(tm=tm, bn=bn, split_k=splits, cluster=cl, deep=deep)
                        if tac not in out:
                            out.append(tac)
        return out

    @hookimpl
    def run(self, problem: Problem, operands: Operands, tactic: CutlassTactic, out) -> None:
        args = self._launch_args(problem, tactic)  # checks the tactic first
        launcher.launch(a=operands.a, a_sf=operands.a_scale, b=operands.b, b_sf=operands.b_scale,
                        alpha=operands.alpha, out=out, **args)

    @hookimpl
    def bind(self, problem: Problem, operands: Operands, tactic: CutlassTactic):
        """The launcher of one (shape, weight, tactic) with its parameter block made once."""
        args = self._launch_args(problem, tactic)
        return launcher.bind(b=operands.b, b_sf=operands.b_scale, plain=problem.act_dtype is not None,
                             out_fp16=problem.out_dtype == torch.float16, **args)

    def _launch_args(self, problem: Problem, tactic: CutlassTactic) -> dict:
        """The launcher's shape and tactic arguments (tactic checked, split-K resolved)."""
        tm = _tm_for(problem.m) if tactic.tm is None else tactic.tm
        bn, cl = tactic.bn, tactic.cluster
        if tm not in launcher.TM_CHOICES or bn not in launcher.BN_CHOICES or cl not in launcher.CLUSTER_CHOICES:
            raise ValueError(f"cutlass: tactic {tactic}: tm must be one of {launcher.TM_CHOICES}, "
                             f"bn one of {launcher.BN_CHOICES}, cluster one of {launcher.CLUSTER_CHOICES}")
        if (tm, bn) in launcher.UNBUILT_TILES:
            raise ValueError(f"cutlass: tactic {tactic}: tm={tm} with bn={bn} is not built (its shared "
                             f"memory holds too few pipeline stages; it deadlocked on an H100)")
        deep = bool(tactic.deep)
        if deep and tm > launcher.DEEP_MAX_TM:
            raise ValueError(f"cutlass: tactic {tactic}: deep=1 needs tm <= {launcher.DEEP_MAX_TM}")
        splits = tactic.split_k or auto_splits(problem, tm, bn, cl)
        splits = max(1, min(splits, launcher.padded_k(problem.k) // launcher.BK))
        return dict(m=problem.m, n=problem.n, k=problem.k, mx=problem.fmt is Fp4Format.MXFP4,
                    a_sf_8x4=problem.a_sf_layout is SfLayout.layout_8x4, tm=tm, bn=bn, splits=splits,
                    cluster=cl, deep=deep)

    @hookimpl
    def build(self, archs: list[str], progress: bool) -> list[str]:
        lines = []
        for arch in archs:
            n = jit.normalize_arch(arch)
            if n == "90a":
                lines.append(f"sm_90a: {launcher.build_sm90(progress=progress)}")
            elif n in blackwell.ARCHS:
                for path in blackwell.build(n, progress=progress):
                    lines.append(f"sm_{n}: {path} (compile-only, not verified on hardware)")
        return lines
