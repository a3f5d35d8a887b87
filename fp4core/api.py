"""The public entry points: ``mm_fp4``, backend queries, tuning and registration."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from typing import Any, Iterator

import torch

from fp4core.dispatch.selector import Explanation, selector
from fp4core.kit import pdl
from fp4core.formats.fp4 import Fp4Format, as_bytes
from fp4core.formats.layouts import SfLayout, flat_scale_bytes
from fp4core.dispatch.prepared import PreparedWeight
from fp4core.dispatch.problem import DeviceInfo, Operands, Problem, device_info, problem_of
from fp4core.dispatch.registry import Backend
from fp4core.dispatch.validation import (activation, build_problem, check_alpha, check_format, check_out,
                         check_out_dtype, plain_activation, weight_rows)

log = logging.getLogger("fp4core")


def mm_fp4(a: torch.Tensor, b: torch.Tensor | PreparedWeight, a_descale: torch.Tensor,
           b_descale: torch.Tensor | None, alpha: torch.Tensor | None = None,
           out_dtype: torch.dtype = torch.bfloat16, out: torch.Tensor | None = None,
           block_size: int = 16, use_8x4_sf_layout: bool = False, backend: str = "auto",
           use_nvfp4: bool = True, skip_check: bool = False) -> torch.Tensor:
    """FP4 block-scaled GEMM: ``out = alpha * dequant(a) @ dequant(b)``; FlashInfer's signature.

    Args:
        a: (M, K/2) packed E2M1, uint8 or float4_e2m1fn_x2, row-major.
        b: (K/2, N) packed E2M1, column-major (pass ``b_fp4.T`` of a contiguous (N, K/2)
            tensor), or a ``PreparedWeight`` from ``fp4core.prepare``.
        a_descale: A's block scales, (round_up(M, 128), round_up(K/block, 4)) bytes in the
            128x4 layout (8x4 and rows rounded to 8 with ``use_8x4_sf_layout``); uint8 or
            float8_e4m3fn (NVFP4) / float8_e8m0fnu (MXFP4). Any shape with that many bytes.
        b_descale: B's block scales over (N, K/block) in the 128x4 layout, passed
            transposed (``b_sf.T``); None when ``b`` is a PreparedWeight.
        alpha: float32 tensor with one element (NVFP4: ``1 / (gs_a * gs_b)``), or None.
        out_dtype: torch.bfloat16 or torch.float16.
        out: optional preallocated contiguous (M, N) tensor of ``out_dtype``.
        block_size: 16 for NVFP4, 32 for MXFP4.
        use_8x4_sf_layout: A's scales are in the 8x4 layout.
        backend: "auto" or an installed backend's name (see ``fp4core.backends()``).
        use_nvfp4: NVFP4 (True) or MXFP4 (False).
        skip_check: skip argument validation and the alignment copies (saves a few microseconds
            per call; every tensor must then be 16-byte aligned, as fresh allocations are).
    Returns:
        ``out``, (M, N) of ``out_dtype``.
    Raises:
        ValueError / TypeError for bad arguments (naming the argument); BackendError
        subclasses when the backend is missing or refuses the problem.
    """
    check = not skip_check
    if check:
        _check_backend_arg(backend)
    problem, ops, weight = _validated(a, b, a_descale, b_descale, alpha, out_dtype, out, block_size,
                                      use_8x4_sf_layout, use_nvfp4, check)
    return _run(problem, ops, weight, backend, out, a.device, check)


def mm_bf16_fp4(a: torch.Tensor, b: torch.Tensor | PreparedWeight, b_descale: torch.Tensor | None,
                alpha: torch.Tensor | None = None, *, backend: str = "auto", out_dtype: torch.dtype | None = None,
                out: torch.Tensor | None = None, block_size: int = 16, enable_pdl: bool = True,
                skip_check: bool = False) -> torch.Tensor:
    """Weight-only FP4 GEMM (W4A16): ``out = (a @ dequant(b).T) * alpha``; FlashInfer's signature.

    Args:
        a: (M, K) bfloat16 or float16 activations, row-major.
        b: (N, K/2) packed E2M1 weight, row-major (uint8 or float4_e2m1fn_x2), or what
            ``prepare_bf16_fp4_weights`` returned as its ``b`` (then ``b_descale`` is None).
        b_descale: the weight's block scales over (N, K/block) in the 128x4 layout (E4M3 for
            NVFP4, E8M0 for MXFP4; uint8 or the format's dtype, any shape with that many bytes).
        alpha: float32 tensor with one element (NVFP4: the weight's dequantization global
            scale, ``1 / gs_w``), or None.
        backend: "auto" or an installed backend that takes bf16/fp16 activations.
        out_dtype: torch.bfloat16 or torch.float16; None means ``a.dtype``.
        out: optional preallocated contiguous (M, N) tensor of ``out_dtype``.
        block_size: 16 (NVFP4) or 32 (MXFP4).
        enable_pdl: False launches this call without programmatic dependent launch; True
            leaves the process setting in force (``FP4CORE_PDL``, SM90+ kernels of fp4-trtllm
            and fp4-cutlass; off by default until verified on hardware). It never changes
            the result (see ``fp4core.kit.pdl``).
        skip_check: skip argument validation and the alignment copies (saves a few microseconds
            per call; every tensor must then be 16-byte aligned, as fresh allocations are).
    Returns:
        ``out``, (M, N) of ``out_dtype``.
    Raises:
        ValueError / TypeError for bad arguments (naming the argument); BackendError
        subclasses when the backend is missing or refuses the problem.
    """
    check = not skip_check
    if check:
        _check_backend_arg(backend)
    problem, ops, weight = _validated_bf16(a, b, b_descale, alpha, out_dtype, out, block_size, check)
    if enable_pdl:
        return _run(problem, ops, weight, backend, out, a.device, check)
    with pdl.override(False):
        return _run(problem, ops, weight, backend, out, a.device, check)


def _check_backend_arg(backend) -> None:
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected 'auto' or a backend name, got {type(backend).__name__}")


#: the address alignment every backend may assume for the tensors of a call (TMA and 16-byte
#: vector loads); torch's own allocations are 256-byte aligned, views at odd offsets are not
ALIGNMENT = 16


def _aligned(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or not t.data_ptr() % ALIGNMENT else t.clone(memory_format=torch.contiguous_format)


def _run(problem: Problem, ops: Operands, weight: PreparedWeight | None, backend: str,
         out: torch.Tensor | None, device: torch.device, align: bool) -> torch.Tensor:
    """Allocate ``out`` if needed and hand the validated call to the selector (an empty
    problem launches nothing). With ``align`` (calls that are checked), a tensor that is not
    ``ALIGNMENT``-byte aligned (a view at an odd offset) is copied first, and a misaligned
    ``out`` is written through a copy: a backend that needs aligned addresses would otherwise
    raise, and ``auto`` leave it out of every later call of the problem."""
    if out is None:
        out = torch.empty((problem.m, problem.n), dtype=problem.out_dtype, device=device)
    if problem.m == 0 or problem.n == 0:
        return out
    if align:
        ptrs = ops.a.data_ptr() | ops.b.data_ptr() | ops.b_scale.data_ptr()  # one test for all: OR the addresses
        if ops.a_scale is not None:
            ptrs |= ops.a_scale.data_ptr()
        if ptrs % ALIGNMENT:
            ops = dataclasses.replace(ops, a=_aligned(ops.a), a_scale=_aligned(ops.a_scale), b=_aligned(ops.b),
                                      b_scale=_aligned(ops.b_scale))
        if out.data_ptr() % ALIGNMENT:
            return out.copy_(selector.run(problem, ops, weight, backend, torch.empty_like(out)))
    return selector.run(problem, ops, weight, backend, out)


def prepare_bf16_fp4_weights(b: torch.Tensor, b_descale: torch.Tensor, alpha: torch.Tensor | None = None, *,
                             backend: str = "auto", block_size: int = 16
                             ) -> tuple[PreparedWeight, None, torch.Tensor | None]:
    """Prepare a weight once for ``mm_bf16_fp4``: every backend that takes bf16 activations
    (or the one named) gets its own layout. FlashInfer's signature.

    Args:
        b: (N, K/2) packed E2M1 weight, row-major; b_descale: its 128x4 scales (see
            ``mm_bf16_fp4``); alpha: float32 (1,) or None, passed back unchanged.
        backend: "auto" (prepare for every backend) or one backend's name.
        block_size: 16 (NVFP4) or 32 (MXFP4).
    Returns:
        ``(b, b_descale, alpha)`` to pass to ``mm_bf16_fp4`` unchanged: ``b`` is a
        PreparedWeight, ``b_descale`` is None.
    """
    fmt = check_format(block_size, block_size == 16)
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected 'auto' or a backend name, got {type(backend).__name__}")
    b8, _, _ = weight_rows(b, b_descale, fmt, None, None)
    if alpha is not None:
        check_alpha(alpha, b.device)
    from fp4core.dispatch.prepared import prepare
    pw = prepare(b8.t(), b_descale, block_size=block_size, use_nvfp4=fmt.block_size == 16,
                 has_alpha=alpha is not None, backends=None if backend == "auto" else [backend],
                 activations="bf16")
    return pw, None, alpha


def _validated_bf16(a, b, b_descale, alpha, out_dtype, out, block_size, check
                    ) -> tuple[Problem, Operands, PreparedWeight | None]:
    """A weight-only call's Problem (``act_dtype`` = a's dtype), Operands and PreparedWeight."""
    prepared = isinstance(b, PreparedWeight)
    fmt = Fp4Format.from_flags(block_size == 16)
    if not check:
        m, k = a.shape
        out_dtype = a.dtype if out_dtype is None else out_dtype
        if prepared:
            n, b8, bsf = b.n, b.canonical.b, b.canonical.b_scale
        else:
            b8, bsf, n = as_bytes(b), flat_scale_bytes(b_descale), b.shape[0]
    else:
        if block_size not in (16, 32):
            raise ValueError(f"block_size: expected 16 (NVFP4) or 32 (MXFP4), got {block_size}")
        m, k = plain_activation(a)
        out_dtype = a.dtype if out_dtype is None else out_dtype
        check_out_dtype(out_dtype)
        if prepared:
            if b_descale is not None:
                raise ValueError("b_descale: must be None when b is a prepared weight (its scales are inside it)")
            if b.activation != "bf16":
                raise ValueError("b: this PreparedWeight was prepared for mm_fp4 (FP4 activations); prepare it "
                                 "with fp4core.prepare_bf16_fp4_weights for mm_bf16_fp4")
            if b.fmt is not fmt:
                raise ValueError(f"b: the prepared weight holds {b.fmt.value} but block_size={block_size} "
                                 f"asks for {fmt.value}")
            if b.k != k:
                raise ValueError(f"a: K mismatch: a has K = {k}, the prepared weight has K = {b.k}")
            if a.device != b.device:
                raise ValueError(f"a: expected a tensor on {b.device} (where the weight is), got {a.device}")
            n, b8, bsf = b.n, b.canonical.b, b.canonical.b_scale
        else:
            b8, bsf, n = weight_rows(b, b_descale, fmt, k, a.device)
        check_alpha(alpha, a.device)
        check_out(out, m, n, out_dtype, a.device)
    if check and k % fmt.block_size:
        raise ValueError(f"a: K = {k} must be a multiple of the {fmt.value} block size {fmt.block_size}")
    problem = problem_of(m, n, k, fmt, out_dtype, SfLayout.layout_128x4, alpha is not None, a.device,
                         prepared, a.dtype)
    return problem, Operands(a, None, b8, bsf, alpha), (b if prepared else None)


def _validated(a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_8x4_sf_layout,
               use_nvfp4, check) -> tuple[Problem, Operands, PreparedWeight | None]:
    """The call's Problem, its canonical Operands (activation; the weight too for a plain
    ``b``) and the PreparedWeight or None. Argument errors name the argument."""
    if isinstance(b, PreparedWeight):
        problem, ops = _prepared_call(a, b, a_descale, b_descale, alpha, out_dtype, out, block_size,
                                      use_8x4_sf_layout, use_nvfp4, check)
        return problem, ops, b
    problem, ops = build_problem(a, b, a_descale, b_descale, alpha, out_dtype, out, block_size,
                                 use_8x4_sf_layout, use_nvfp4, check)
    return problem, ops, None


def _prepared_call(a, w: PreparedWeight, a_descale, b_descale, alpha, out_dtype, out, block_size,
                   use_8x4_sf_layout, use_nvfp4, check) -> tuple[Problem, Operands]:
    fmt = Fp4Format.from_flags(use_nvfp4)
    layout = SfLayout.layout_8x4 if use_8x4_sf_layout else SfLayout.layout_128x4
    if check:
        check_format(block_size, use_nvfp4)
        check_out_dtype(out_dtype)
        if b_descale is not None:
            raise ValueError("b_descale: must be None when b is a PreparedWeight (its scales are inside it)")
        if w.fmt is not fmt:
            raise ValueError(f"b: the PreparedWeight holds {w.fmt.value} but use_nvfp4={use_nvfp4} asks for "
                             f"{fmt.value}")
    a8, asf, m, k = activation(a, a_descale, fmt, layout, check)
    if check:
        if k != w.k:
            raise ValueError(f"a: K mismatch: a has K = {k}, the PreparedWeight has K = {w.k}")
        if a.device != w.device:
            raise ValueError(f"a: expected a tensor on {w.device} (where the PreparedWeight is), got {a.device}")
        check_alpha(alpha, a.device)
        check_out(out, m, w.n, out_dtype, a.device)
    problem = problem_of(m, w.n, k, fmt, out_dtype, layout, alpha is not None, a.device, True)
    return problem, Operands(a8, asf, w.canonical.b, w.canonical.b_scale, alpha)


# -- problems without tensors -----------------------------------------------------------------
def make_problem(m: int | None, n: int, k: int, *, use_nvfp4: bool = True,
                 out_dtype: torch.dtype = torch.bfloat16, use_8x4_sf_layout: bool = False,
                 has_alpha: bool = True, prepared: bool = False,
                 device: torch.device | str | DeviceInfo | None = None,
                 act_dtype: torch.dtype | None = None) -> Problem:
    """Describe a problem by its sizes, for ``explain``, ``supported_backends`` and tuning.

    ``act_dtype`` None describes an ``mm_fp4`` call (FP4 activations); torch.bfloat16 or
    torch.float16 a weight-only ``mm_bf16_fp4`` call.

    ``device`` may be a torch device, a DeviceInfo (e.g. a hypothetical SM100 device), or
    None for the current CUDA device (the CPU without one).
    """
    fmt = Fp4Format.from_flags(use_nvfp4)
    check_out_dtype(out_dtype)
    if k % fmt.block_size:
        raise ValueError(f"k: must be a multiple of the {fmt.value} block size {fmt.block_size}, got {k}")
    if n < 1 or (m is not None and m < 0):
        raise ValueError(f"m, n: expected m >= 0 and n >= 1, got m={m}, n={n}")
    dev = device if isinstance(device, DeviceInfo) else device_info(device)
    layout = SfLayout.layout_8x4 if use_8x4_sf_layout else SfLayout.layout_128x4
    if act_dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"act_dtype: expected None (FP4), torch.bfloat16 or torch.float16, got {act_dtype}")
    return Problem(m, n, k, fmt, out_dtype, layout, has_alpha, dev, prepared, act_dtype)


def _problem_from(args: tuple, kwargs: dict) -> Problem:
    if len(args) == 1 and isinstance(args[0], Problem) and not kwargs:
        return args[0]
    params = dict(zip(("a", "b", "a_descale", "b_descale", "alpha", "out_dtype", "out", "block_size",
                       "use_8x4_sf_layout", "backend", "use_nvfp4"), args))
    params.update(kwargs)
    params.pop("backend", None)
    params.pop("skip_check", None)
    defaults = dict(alpha=None, out_dtype=torch.bfloat16, out=None, block_size=16,
                    use_8x4_sf_layout=False, use_nvfp4=True)
    p = {**defaults, **params}
    problem, _, _ = _validated(p["a"], p["b"], p["a_descale"], p["b_descale"], p["alpha"], p["out_dtype"],
                               p["out"], p["block_size"], p["use_8x4_sf_layout"], p["use_nvfp4"], True)
    return problem


def supported_backends(*args: Any, **kwargs: Any) -> list[str]:
    """Backends ``auto`` would consider, best guess first.

    Pass a ``Problem`` (see ``make_problem``) or the same arguments as ``mm_fp4``.
    """
    ok, _ = selector.candidates(_problem_from(args, kwargs))
    return [b.name for b in ok]


def _capability_device(capability) -> DeviceInfo:
    if capability is None:
        return device_info()
    if isinstance(capability, int):
        capability = (capability // 10, capability % 10)
    major, minor = capability
    return DeviceInfo("cuda", None, f"hypothetical sm_{major}{minor}", (int(major), int(minor)))


def is_backend_supported(backend: str, capability: int | tuple[int, int] | None = None) -> bool:
    """Would ``backend`` (or ``"auto"``) run a typical NVFP4 problem on this capability?

    ``capability`` is an int like 90 / 100, a (major, minor) tuple, or None for the current
    device. The probe problem is 128 x 4096 x 4096, NVFP4, bf16 out, with alpha. For
    ``"auto"`` the answer is whether any enabled backend would.
    """
    problem = make_problem(128, 4096, 4096, device=_capability_device(capability))
    if backend == "auto":
        return bool(selector.candidates(problem)[0])
    be = selector.registry.get(backend)
    return be is not None and bool(be.supports(problem))


def explain(*args: Any, backend: str = "auto", **kwargs: Any) -> Explanation:
    """Which backend and tactic a call would use, where that came from, and why every other
    backend was excluded. Takes a ``Problem`` or ``mm_fp4``'s arguments; never tunes."""
    return selector.explain(_problem_from(args, kwargs), backend)


# -- backends ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BackendStatus:
    """One row of ``fp4core.backends()``."""

    name: str
    status: str  # "loaded", "broken" or "disabled"
    package: str = ""
    version: str = ""
    origin: str = ""
    description: str = ""
    targets: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()
    error: str = ""

    @property
    def unverified_targets(self) -> tuple[str, ...]:
        return tuple(t for t in self.targets if t not in self.verified)


def backends() -> list[BackendStatus]:
    """Every backend fp4core knows of: loaded ones, broken plugins (with their error) and
    ones disabled by FP4CORE_BACKENDS."""
    rows = [BackendStatus(b.name, "loaded", b.info.package, b.version, b.origin, b.info.description,
                          tuple(b.info.targets), tuple(b.info.verified), b.last_error)
            for b in selector.registry.backends()]
    rows += [BackendStatus(b.name, "broken", origin=b.origin, error=b.error) for b in selector.registry.broken()]
    rows += [BackendStatus(n, "disabled", error=why) for n, why in selector.registry.disabled().items()]
    return rows


def register_backend(plugin: Any) -> Backend:
    """Register a backend plugin object (or class) in this process; returns it loaded.

    Raises ValueError when the plugin is invalid (missing hooks, bad metadata, name taken).
    """
    return selector.registry.register(plugin)


def unregister_backend(name: str) -> None:
    """Remove a registered backend by name."""
    selector.registry.unregister(name)


# -- tuning -----------------------------------------------------------------------------------
@contextlib.contextmanager
def autotune(tune_mode: bool = True, *, force: bool = False, save: bool = True,
             verbose: bool = True) -> Iterator[None]:
    """Inside this context, ``auto`` calls on untuned problem buckets time every candidate
    (backend, tactic) and remember the fastest; on exit new results are saved to the tuning
    cache file. The tuning state is context-local (a ``contextvars`` variable): other threads
    and asyncio tasks keep their own mode.

    Args:
        tune_mode: False makes the context a no-op (FlashInfer's ``autotune(False)``).
        force: re-tune buckets that already have a cached result (once per bucket).
        save: write new results to the cache file on exit.
        verbose: print progress lines to stderr while tuning.
    """
    if not tune_mode:
        yield
        return
    progress = (lambda msg: print(msg, file=sys.stderr, flush=True)) if verbose else None
    try:
        with selector.tuning(force=force, progress=progress):
            yield
    finally:
        if save and selector.cache.dirty:
            selector.cache.save_or_warn()


def tune(problems: list[Problem], *, force: bool = False, verbose: bool = True,
         save: bool = True) -> list[Explanation]:
    """Tune each problem (as ``auto`` would be tuned for it) and return what was chosen."""
    results = []
    with autotune(force=force, save=save, verbose=verbose):
        for problem in problems:
            selector.choose(problem, "auto")
            results.append(selector.explain(problem))
    return results


def build(backends: list[str] | None = None, archs: list[str] | None = None,
          progress: bool = True) -> dict[str, list[str]]:
    """Prebuild the JIT-compiled kernels of installed backends; see ``fp4core.tools.prebuild.build``
    (imported here on use, so ``import fp4core`` never loads the tooling)."""
    from fp4core.tools.prebuild import build as _build
    return _build(backends, archs, progress)

