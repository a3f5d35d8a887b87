"""The ``cutlass`` backend: hooks for fp4core (entry point ``fp4core.backends: cutlass``)."""

from __future__ import annotations

import functools
import math

import torch

from fp4core import jit
from fp4core.formats import Fp4Format
from fp4core.hookspec import BackendInfo, Support, hookimpl
from fp4core.layouts import SfLayout
from fp4core.problem import Operands, Problem

from . import __version__, blackwell, launcher

#: K must be a multiple of this: TMA needs 16-byte weight rows (K/2 bytes) and the kernel's
#: scale handling works on whole 64-value halves of its 128-wide stages.
K_ALIGN = 64


@functools.lru_cache(maxsize=None)
def _sm_count(index: int | None) -> int:
    if index is None or not torch.cuda.is_available():
        return 132
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=1)
def _toolchain_problem() -> str:
    """Why the kernels cannot be built here, or "" when nvcc and the headers are present."""
    if jit.nvcc_path() is None:
        return ("nvcc (CUDA compiler) not found: the kernels are compiled on first use; install a "
                "CUDA toolkit and put nvcc on PATH or set CUDA_HOME")
    if jit.cutlass_include_dir() is None:
        return "CUTLASS/CuTe headers not found: pip install nvidia-cutlass"
    return ""


def auto_splits(problem: Problem, tm: int, bn: int, cluster: int = 1) -> int:
    """Split K over CTAs when one wave of output tiles leaves SMs idle: aim at ~1 CTA per SM,
    keep at least 8 stages (1024 values of K) per split."""
    m = problem.m or 1
    tiles = math.ceil(math.ceil(problem.n / bn) / cluster) * cluster * math.ceil(m / tm)
    sms = _sm_count(problem.device.index)
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
            priority={"decode": -20, "small": 10, "medium": 40, "large": 60})

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
        if problem.a_sf_layout not in (SfLayout.layout_128x4, SfLayout.layout_8x4):
            return Support.no(f"A scales must be 128x4 or 8x4, got {problem.a_sf_layout.value}")
        if problem.prepared:
            return Support.no("takes the canonical weight (no prepare hook); pass b as given")
        m = problem.m or 1
        if launcher.padded_k(problem.k) * m >= 2**31 or problem.n * m >= 2**31:
            return Support.no("sizes past 2^31 elements are not supported (32-bit indices)")
        why = _toolchain_problem()
        if why:
            return Support.no(why)
        return Support.yes()

    @hookimpl
    def tactics(self, problem: Problem) -> list[dict]:
        m = problem.m or 1
        first = _tm_for(m)
        tms = [first]
        if first == 256:
            tms.append(128)
        elif first >= 64:
            tms.append(first // 2)
        out: list[dict] = []
        for cl in launcher.CLUSTER_CHOICES:
            for tm in tms:
                for bn in launcher.BN_CHOICES:
                    s = auto_splits(problem, tm, bn, cl)
                    for splits in dict.fromkeys([s, 1]):
                        tac = {"tm": tm, "bn": bn, "split_k": splits, "cluster": cl}
                        if tac not in out:
                            out.append(tac)
        # Best guesses first: multicast clusters; small M wants more CTAs (bn=64), large M the
        # bigger weight tile (bn=128, less activation traffic per FLOP).
        out.sort(key=lambda t: (t["cluster"] != 2, (t["bn"] != 64) if m <= 256 else (t["bn"] != 128),
                                t["tm"] != first))
        return out

    @hookimpl
    def run(self, problem: Problem, operands: Operands, tactic: dict, out) -> None:
        tm = int(tactic.get("tm", _tm_for(problem.m)))
        bn = int(tactic.get("bn", 128))
        cl = int(tactic.get("cluster", 1))
        if tm not in launcher.TM_CHOICES or bn not in launcher.BN_CHOICES or cl not in launcher.CLUSTER_CHOICES:
            raise ValueError(f"cutlass: tactic {tactic}: tm must be one of {launcher.TM_CHOICES}, "
                             f"bn one of {launcher.BN_CHOICES}, cluster one of {launcher.CLUSTER_CHOICES}")
        splits = int(tactic.get("split_k", 0)) or auto_splits(problem, tm, bn, cl)
        splits = max(1, min(splits, launcher.padded_k(problem.k) // launcher.BK))
        launcher.launch(
            a=operands.a, a_sf=operands.a_scale, b=operands.b, b_sf=operands.b_scale,
            alpha=operands.alpha, out=out, m=problem.m, n=problem.n, k=problem.k,
            mx=problem.fmt is Fp4Format.MXFP4, a_sf_8x4=problem.a_sf_layout is SfLayout.layout_8x4,
            tm=tm, bn=bn, splits=splits, cluster=cl)

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
