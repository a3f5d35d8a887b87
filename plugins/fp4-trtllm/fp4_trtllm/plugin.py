"""The ``trtllm`` backend: hooks for fp4core (entry point ``fp4core.backends: trtllm``)."""

from __future__ import annotations

import dataclasses
import math
import re

import torch

from fp4core import kit
from fp4core.kit import jit
from fp4core.formats.fp4 import Fp4Format
from fp4core.dispatch.hooks import BackendInfo, Support, Tactic, hookimpl
from fp4core.formats.layouts import SfLayout
from fp4core.dispatch.problem import Operands, Problem

from . import __version__, launcher
from .layout import CHUNK_K, prepare_weight

#: Largest M accepted: past it the weight is streamed once per 64 rows and a tensor-core
#: GEMM backend is the right tool.
MAX_M = 256
#: Largest M of a weight-only (W4A16) call: one pass of the split-K ring kernel (8 tiles of 8
#: rows); its bf16/fp16 activation slots are 4x the FP4 ones, so larger passes do not pay.
MAX_M_W16 = 64
#: Marker the prepare hook leaves in Operands.extra; run checks it.
EXTRA_KEY = "fp4_trtllm"


STREAMK, SPLITK = "streamk", "splitk"


@dataclasses.dataclass(frozen=True)
class TrtllmTactic(Tactic):
    """One launch configuration of the trtllm backend.

    Fields:
        kernel: "streamk" (persistent stream-K kernel, csrc/fp4_gemv.cu) or "splitk" (split-K
            kernel, csrc/fp4_splitk.cu).
        t: tiles of 16 weight rows per warp (clamped to 2 for 64-row activation passes,
            M > 32, where neither kernel has a t = 4 variant).
        warps: warps per CTA.
        ctas: stream-K only: CTAs per SM of the persistent grid, 0 = as many as fit.
        split_k: split-K only: CTAs sharing each tile of rows along K, 0 = automatic
            (``_auto_splits``); clamped to the K chunks.
        ring: split-K only: 1 = stream the chunks through a per-warp shared-memory cp.async
            ring, 0 = the register pipeline.

    The fields of the other kernel are None (and left out of the label); left None for the
    tactic's own kernel they take its default (ctas 0; split_k 0, ring 0), so the labels read
    as the JSON dicts of earlier versions did, e.g. ``ctas=0,kernel=streamk,t=4,warps=4`` and
    ``kernel=splitk,ring=1,split_k=12,t=4,warps=4``.
    """

    kernel: str = STREAMK
    t: int = 4
    warps: int = 4
    ctas: int | None = None
    split_k: int | None = None
    ring: int | None = None

    def __post_init__(self):
        if self.kernel not in (STREAMK, SPLITK):
            raise ValueError(f"TrtllmTactic.kernel: expected {STREAMK!r} or {SPLITK!r}, got {self.kernel!r}")
        defaults = {"ctas": 0} if self.kernel == STREAMK else {"split_k": 0, "ring": 0}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)


#: Stream-K kernel: (tiles of 16 rows per warp, warps per CTA) worth timing per activation
#: pass size NT, best measured first (H100, 2026-11-25: it won at M = 32 and at M = 16 on the
#: 28672-wide layers before the split-K ring existed; on the H200 it won no decode shape).
_STREAMK = {1: [(4, 4), (4, 2), (4, 1), (2, 8)],
            2: [(4, 4), (4, 2), (4, 1), (2, 8)],
            4: [(4, 2), (2, 8), (2, 4), (1, 4)],
            8: [(2, 4), (2, 8), (1, 8), (1, 4)]}
#: Split-K kernel: (t, warps) per NT, best measured first. Each is offered with the
#: shared-memory ring (faster on every H200 decode shape, M = 1...64) and with the register
#: pipeline, at three split counts: the one that fills the SMs ~3 times (``_auto_splits``),
#: its half, and the one that spreads the grid most evenly (``_balanced_splits``).
_SPLITK = {1: [(4, 4), (2, 8), (2, 4)], 2: [(2, 4), (4, 4)], 4: [(2, 4), (1, 4)], 8: [(2, 4), (1, 4)]}
#: Split-K ring tactics with small CTAs (1-2 warps), offered at the three best single-wave
#: split counts of ``_balanced_splits``: small CTAs let the grid divide evenly over the SMs.
_BALANCED = {1: [(4, 1), (2, 2)], 2: [(4, 1), (2, 2)], 4: [(2, 1), (1, 2)]}


def _auto_splits(problem: Problem, t: int, warps: int, ctas_per_sm: int = 3) -> int:
    """Split K until the split-K grid fills the SMs about ``ctas_per_sm`` times over, keeping
    at least 4 chunks (256 values of K) per split."""
    gx, _, gz = launcher.splitk_grid(problem.m or 1, problem.n, t, warps, 1)
    chunks = problem.k // CHUNK_K
    want = kit.sm_count(problem.device.index) * ctas_per_sm
    return max(1, min(max(1, chunks // 4), round(want / (gx * gz))))


def _resident_ctas(problem: Problem, t: int, warps: int) -> int:
    """Split-K ring CTAs that fit on one SM at once: registers (the ring variants are capped at
    128 per thread, so 16 warps) and shared memory (the ring's bytes per warp, as laid out by
    RingSlot and ring_chunks in csrc/fp4_splitk.cu, plus the 1 KiB the driver keeps per CTA)."""
    by_smem = kit.smem_per_sm(problem.device.index) // (warps * ring_bytes_per_warp(problem, t) + 1024)
    return max(1, min(16 // warps, by_smem, 32))


def _balanced_splits(problem: Problem, t: int, warps: int, keep: int = 1) -> list[int]:
    """Split counts whose grid runs in one wave (every CTA resident at once) and divides most
    evenly over the SMs, best first: the score is the average SM's share of the busiest one's
    work (CTAs / (SMs x ceil(CTAs / SMs))); grids whose busiest SM holds fewer than 6 warps
    are left out where others exist (too few to hide the decode chain's latency); the fewest
    splits among equals; at least 4 chunks per split. A memory-bound grid streams at the rate
    of its busiest SMs: on the H200, 28672 x 8192 at M = 1 with 224 CTAs of 4 warps (40 SMs
    with one CTA, 92 with two) left the least-loaded SMs idle 37 % of the kernel (ncu
    sm__cycles_active min / max)."""
    gx, _, gz = launcher.splitk_grid(problem.m or 1, problem.n, t, warps, 1)
    sms = kit.sm_count(problem.device.index)
    cap = _resident_ctas(problem, t, warps) * sms
    most = max(1, problem.k // CHUNK_K // 4)
    counts = [s for s in range(1, most + 1) if gx * gz * s <= cap] or [1]
    counts = [s for s in counts if math.ceil(gx * gz * s / sms) * warps >= 6] or counts

    def score(s: int) -> tuple[float, int]:
        ctas = gx * gz * s
        return (round(ctas / (sms * math.ceil(ctas / sms)), 3), -s)

    return sorted(counts, key=score, reverse=True)[:keep]


def ring_bytes_per_warp(problem: Problem, t: int) -> int:
    """Shared memory of one warp's split-K ring (RingSlot x ring_chunks in csrc/fp4_splitk.cu):
    weight tiles and their scales, then the activation tiles (FP4 bytes and scale words, or
    the plain bf16/fp16 values of a weight-only call, 4x as many bytes)."""
    nt = launcher.nt_for(problem.m or 1)
    w = t * 512 + t * (32 if problem.fmt is Fp4Format.MXFP4 else 64)
    a = nt * 1024 if problem.act_dtype is not None else nt * 256 + nt * 128
    return (5 if t >= 4 else 6) * (w + a)


def _w16_tactics(problem: Problem, nt: int) -> list[TrtllmTactic]:
    """Weight-only tactics: the split-K ring kernel at the W4A4 ring's (t, warps) and split
    counts, those whose CTA fits in one SM's shared memory (the activation slots are larger)."""
    room = kit.smem_per_sm(problem.device.index) - 1024
    out = []
    pairs = _SPLITK[nt] + _BALANCED.get(nt, [])
    for t, w in pairs:
        t_eff = 2 if t > 2 and (problem.m or 1) > 32 else t
        if w * ring_bytes_per_warp(problem, t_eff) > room:
            continue
        s = _auto_splits(problem, t, w)
        for splits in sorted({s, max(1, s // 2), *_balanced_splits(problem, t, w)}, reverse=True):
            tac = TrtllmTactic(SPLITK, t=t, warps=w, split_k=splits, ring=1)
            if tac not in out:
                out.append(tac)
    return out


def _word_code(problem: Problem) -> str | None:
    """The NVFP4 weight word code (``wordcode``) the kernels expect for ``problem``: "bf16" for
    weight-only calls, "f16" for FP4 activations; None for MXFP4 (natural codes)."""
    if problem.fmt is Fp4Format.MXFP4:
        return None
    return "f16" if problem.act_dtype is None else "bf16"


class TrtllmBackend:
    """TensorRT-LLM-style small-M FP4 GEMM: prepared (shuffled) weight, swap-AB mma.sync kernel."""

    @hookimpl
    def backend_info(self) -> BackendInfo:
        return BackendInfo(
            name="trtllm", version=__version__, package="fp4-trtllm",
            description="swap-AB mma.sync kernels (stream-K, split-K) for small M (decode), prepared weight",
            targets=("sm80", "sm90a", "sm100a", "sm120a"), verified=("sm90a",),
            priority={"decode": 50, "small": 30, "medium": -10},
            needs_prepare=True, tactic_type=TrtllmTactic, activations=("fp4", "bf16", "fp16"))

    @hookimpl
    def supports(self, problem: Problem) -> Support:
        dev = problem.device
        if not dev.is_cuda:
            return Support.no(f"needs a CUDA device (the problem is on {dev.type})")
        if dev.sm < 80:
            return Support.no(f"needs SM80 or newer (mma.sync bf16/fp16), device is sm_{dev.sm}")
        if problem.k % CHUNK_K:
            return Support.no(f"K must be a multiple of {CHUNK_K}, got K = {problem.k}")
        if problem.m is not None and problem.m > MAX_M:
            return Support.no(f"small-M kernel: M <= {MAX_M}, got M = {problem.m}")
        if problem.act_dtype is not None:
            if problem.m is not None and problem.m > MAX_M_W16:
                return Support.no(f"weight-only small-M kernel: M <= {MAX_M_W16}, got M = {problem.m}")
            if problem.fmt is Fp4Format.MXFP4 and problem.act_dtype == torch.float16:
                return Support.no("MXFP4 weights need bfloat16 activations (E8M0 scales exceed fp16's range)")
        if problem.a_sf_layout not in (SfLayout.layout_128x4, SfLayout.layout_8x4):
            return Support.no(f"A scales must be 128x4 or 8x4, got {problem.a_sf_layout.value}")
        if problem.n * problem.k // 2 >= 2**31 or (problem.m or 1) * problem.n >= 2**31:
            return Support.no("sizes past 2^31 elements are not supported (32-bit indices)")
        if kit.nvcc_missing():
            return Support.no(kit.nvcc_missing())
        return Support.yes()

    @hookimpl
    def prepare(self, problem: Problem, operands: Operands) -> Operands:
        """The kernel's layout; NVFP4 words in the bf16 word code for weight-only problems (the
        W4A16 kernel decodes them straight to bf16, fp16 activations convert), else f16."""
        code = _word_code(problem)
        w, s = prepare_weight(operands.b, operands.b_scale, problem.fmt, code=code or "f16")
        extra = {EXTRA_KEY: {"n": problem.n, "k": problem.k, "fmt": problem.fmt.value, "code": code}}
        return Operands(None, None, w, s, None, extra)

    @hookimpl
    def tactics(self, problem: Problem) -> list[TrtllmTactic]:
        """Best guess first (fields: see ``TrtllmTactic``). Stream-K tactics set ``t``,
        ``warps`` and ``ctas``; split-K ones ``t``, ``warps``, ``split_k`` and ``ring``.
        Split-K with the shared-memory ring leads at every M: on the H200 it was the fastest
        tactic at M = 1...64 on the Llama-70B layers (stream-K had led above M = 16 on H100,
        before the ring existed). Weight-only problems get split-K ring tactics only (the one
        kernel with a W4A16 variant; ``_w16_tactics``)."""
        nt = launcher.nt_for(problem.m or 1)
        if problem.act_dtype is not None:
            return _w16_tactics(problem, nt)
        sk = [TrtllmTactic(STREAMK, t=t, warps=w, ctas=0) for t, w in _STREAMK[nt]]
        sk.append(dataclasses.replace(sk[0], ctas=1))  # one CTA per SM: fewer, longer K streams
        sp = []
        for t, w in _SPLITK[nt]:
            s = _auto_splits(problem, t, w)
            for splits in sorted({s, max(1, s // 2), *_balanced_splits(problem, t, w)}, reverse=True):
                for ring in (1, 0):  # the ring was the faster on every H200 decode shape
                    sp.append(TrtllmTactic(SPLITK, t=t, warps=w, split_k=splits, ring=ring))
        for t, w in _BALANCED.get(nt, []):
            for splits in _balanced_splits(problem, t, w, keep=3):
                tac = TrtllmTactic(SPLITK, t=t, warps=w, split_k=splits, ring=1)
                if tac not in sp:
                    sp.append(tac)
        return sp + sk

    @hookimpl
    def build(self, archs: list[str], progress: bool) -> list[str]:
        """Compile the kernel library for each SM80+ architecture in ``archs`` (the JIT cache
        entry that the first ``run`` would otherwise build)."""
        lines = []
        for arch in archs:
            if int(re.match(r"sm_(\d+)", arch).group(1)) < 80:
                continue
            path = jit.build(launcher.LIB_NAME, list(launcher.SOURCES), arch=arch,
                             flags=list(launcher.FLAGS), progress=progress)
            lines.append(f"{launcher.LIB_NAME} {arch}: {path}")
        return lines

    @hookimpl
    def run(self, problem: Problem, operands: Operands, tactic: TrtllmTactic, out) -> None:
        launch, args = self._launch_args(problem, operands, tactic)
        launch(**args, a=operands.a, a_sf=operands.a_scale, alpha=operands.alpha, out=out)

    @hookimpl
    def bind(self, problem: Problem, operands: Operands, tactic: TrtllmTactic):
        """The launcher of one (shape, weight, tactic) with its parameter block made once."""
        _, args = self._launch_args(problem, operands, tactic)
        splitk = "splits" in args
        return launcher.bind(**args, out_fp16=problem.out_dtype == torch.float16, device=operands.b.device,
                             splitk=splitk)

    @hookimpl
    def bind_quantizing(self, problem: Problem, operands: Operands, tactic: TrtllmTactic, act_dtype):
        """The split-K ring kernel with the NVFP4 activation quantization inside (static or
        dynamic scale; ``launcher.bind_fused_quant``: one launch, the bits of quantizer + this
        tactic) for NVFP4 W4A4 problems with alpha, m <= 32, bf16/fp16 inputs and split-K ring
        tactics; None for anything else."""
        if (problem.fmt is not Fp4Format.NVFP4 or problem.act_dtype is not None or not problem.has_alpha
                or problem.m is None or problem.m > launcher.FUSED_QUANT_MAX_M
                or act_dtype not in launcher.FUSED_QUANT_ACT_CODES or tactic.kernel != SPLITK or not tactic.ring):
            return None
        _, args = self._launch_args(problem, operands, tactic)  # checks the weight's layout and code
        return launcher.bind_fused_quant(w=args["w"], w_sf=args["w_sf"], m=problem.m, n=problem.n, k=problem.k,
                                         t=args["t"], warps=args["warps"], splits=args["splits"],
                                         act_dtype=act_dtype, out_fp16=problem.out_dtype == torch.float16,
                                         device=operands.b.device)

    def _launch_args(self, problem: Problem, operands: Operands, tactic: TrtllmTactic):
        """(launcher function, its arguments but the activation, alpha and out)."""
        meta = operands.extra.get(EXTRA_KEY)
        if meta is None:
            raise ValueError("trtllm: the weight is not in this backend's layout; pass a weight from "
                             "fp4core.prepare(b, b_descale) (mm_fp4 does this for backend='trtllm')")
        if (meta["n"], meta["k"], meta["fmt"]) != (problem.n, problem.k, problem.fmt.value):
            raise ValueError(f"trtllm: prepared weight is {meta}, problem is {problem.describe()}")
        if meta.get("code") != _word_code(problem):
            what = "FP4 (mm_fp4)" if problem.act_dtype is None else "bf16/fp16 (mm_bf16_fp4)"
            raise ValueError(f"trtllm: the weight's NVFP4 word code is {meta.get('code')!r}, calls with {what} "
                             f"activations need {_word_code(problem)!r}; prepare the weight for this kind of "
                             "call (fp4core.prepare for mm_fp4, fp4core.prepare_bf16_fp4_weights for mm_bf16_fp4)")
        t, warps = tactic.t, tactic.warps
        if t > 2 and problem.m > 32:
            t = 2  # neither kernel has a t=4 variant for 64-row activation passes
        act = launcher.ACT_CODES.get(problem.act_dtype, 0)
        if act and (tactic.kernel != SPLITK or not tactic.ring):
            raise ValueError(f"trtllm: weight-only (W4A16) calls run the split-K ring kernel only, got tactic "
                             f"{tactic.label()}")
        cols = problem.k // problem.block_size
        args = dict(w=operands.b, w_sf=operands.b_scale, m=problem.m, n=problem.n, k=problem.k,
                    mx=problem.fmt is Fp4Format.MXFP4,
                    a_sf_8x4=problem.a_sf_layout is SfLayout.layout_8x4,
                    a_sf_cols=(cols + 3) // 4 * 4, t=t, warps=warps)
        if tactic.kernel == SPLITK:
            splits = tactic.split_k or _auto_splits(problem, t, warps)
            args.update(splits=max(1, min(splits, problem.k // CHUNK_K)), ring=bool(tactic.ring), act=act)
            return launcher.launch_splitk, args
        args.update(ctas=tactic.ctas)
        return launcher.launch, args
