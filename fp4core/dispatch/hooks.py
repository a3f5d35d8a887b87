"""The backend hook contract (pluggy project name ``fp4core``).

A backend is one plugin object (a module, a class instance, or a class that fp4core
instantiates with no arguments) whose methods carry ``@fp4core.hookimpl``:

    backend_info()                          -> BackendInfo        required
    supports(problem)                       -> Support            required
    run(problem, operands, tactic, out)     -> None               required
    tactics(problem)                        -> list[Tactic]       optional ([tactic_type()] if absent)
    prepare(problem, operands)              -> Operands           optional (identity)
    bind(problem, operands, tactic)         -> callable           optional (calls run)
    bind_quantizing(problem, operands, tactic, act_dtype) -> callable | None  optional (None)

Plugins are registered in pluggy under their backend names. fp4core calls each hook for one
named backend at a time, through a pluggy hook caller restricted to that plugin (``run`` alone
is called directly: see ``Backend``); pluggy validates the signatures when the plugin is
registered. Hooks are plain functions: a hook may take fewer arguments than the spec names
(pluggy passes only the ones it asks for). A tactic is an instance of the backend's own
frozen dataclass (``BackendInfo.tactic_type``, a subclass of ``fp4core.Tactic``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import pluggy

from fp4core.dispatch.problem import Operands, Problem
from fp4core.dispatch.tactic import Tactic

PROJECT = "fp4core"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


#: M regimes that backends give heuristic priorities for.
REGIMES = ("decode", "small", "medium", "large")


def regime_of(m: int | None) -> str:
    """decode: m <= 16; small: m <= 128; medium: m <= 1024; large: bigger."""
    if m is None or m <= 16:
        return "decode"
    if m <= 128:
        return "small"
    if m <= 1024:
        return "medium"
    return "large"


@dataclasses.dataclass(frozen=True)
class Support:
    """Answer of ``supports``: ``ok`` plus a human-readable reason when not."""

    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls, note: str = "") -> "Support":
        return cls(True, note)

    @classmethod
    def no(cls, reason: str) -> "Support":
        return cls(False, reason)

    def __bool__(self) -> bool:
        return self.ok


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """What a backend says about itself.

    Attributes:
        name: the backend's name in ``mm_fp4(backend=...)``.
        version: the backend's version; a change invalidates its tuning-cache entries.
        package: the pip distribution that ships it ("fp4core" for built-ins).
        description: one line for ``fp4core backends``.
        targets: architectures it has code for, e.g. ("sm90a", "sm100a").
        verified: the subset of ``targets`` measured on real hardware; the CLI marks the
            rest "not verified on hardware".
        priority: heuristic order per M regime (see ``REGIMES``; higher goes first). A key
            "sm90:decode" overrides "decode" on SM90 devices; for weight-only problems
            (``mm_bf16_fp4``) "w4a16:decode" overrides both, because a backend's rank among
            W4A16 kernels need not match its rank among W4A4 ones. Missing regimes count 0.
        needs_prepare: the backend wants its own weight layout; with plain (unprepared)
            weights ``auto`` skips it and an explicit call prepares the weight every call.
        tactic_type: the backend's tactic class (a frozen dataclass subclassing
            ``fp4core.Tactic``); ``tactics`` returns its instances, ``run`` receives one, the
            tuning cache stores its JSON. The default, ``Tactic`` itself, has no fields.
        activations: what A may be: "fp4" (``mm_fp4``), "bf16" and/or "fp16" (weight-only,
            ``mm_bf16_fp4``). A backend is asked about (and given) only problems whose
            ``problem.activation`` is listed, so weight-only support is an explicit opt-in.
    """

    name: str
    version: str
    package: str = ""
    description: str = ""
    targets: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()
    priority: Mapping[str, int] = dataclasses.field(default_factory=dict)
    needs_prepare: bool = False
    tactic_type: type[Tactic] = Tactic
    activations: tuple[str, ...] = ("fp4",)

    def priority_for(self, problem: Problem) -> int:
        regime = regime_of(problem.m)
        keys = [f"sm{problem.device.sm}:{regime}", regime]
        if problem.act_dtype is not None:
            keys.insert(0, f"w4a16:{regime}")
        return next((self.priority[k] for k in keys if k in self.priority), 0)


class BackendSpec:
    """Hook specifications. See the module docstring and docs/plugins.md."""

    @hookspec(firstresult=True)
    def backend_info(self) -> BackendInfo:
        """Return this backend's metadata. Called once at registration."""

    @hookspec(firstresult=True)
    def supports(self, problem: Problem) -> Support:
        """Can this backend run ``problem`` on ``problem.device``?

        Cheap and side-effect free: check capability, library versions, dtypes, layouts,
        shape and alignment limits; never launch GPU work. ``problem.m`` is None when
        asked about preparing a weight for any M.
        """

    @hookspec(firstresult=True)
    def prepare(self, problem: Problem, operands: Operands) -> Operands:
        """Convert the weight side (``operands.b``, ``b_scale``) into this backend's
        preferred layout, once. ``operands.a`` is None. Return new Operands (may share
        tensors with the input; must not modify them)."""

    @hookspec(firstresult=True)
    def tactics(self, problem: Problem) -> list[Tactic]:
        """Configurations worth timing for ``problem``, best guess first: instances of
        ``backend_info().tactic_type``."""

    @hookspec
    def run(self, problem: Problem, operands: Operands, tactic: Tactic, out: Any) -> None:
        """Compute ``out[:] = alpha * A @ B^T`` with ``tactic``.

        ``out`` is a contiguous (m, n) tensor of ``problem.out_dtype``. On CUDA launch on
        the current stream: no host synchronisation, no allocation beyond a workspace
        cached across calls, safe inside CUDA-graph capture.
        """

    @hookspec(firstresult=True)
    def bind(self, problem: Problem, operands: Operands, tactic: Tactic) -> Any:
        """Optional: a launcher with everything but the activation fixed, for callers that
        run one (problem, weight, tactic) many times (``Fp4Linear``'s per-M plans).

        ``operands`` holds the weight as ``run`` gets it (``a``, ``a_scale``, ``alpha`` are
        None). Return ``launch(a, a_scale, alpha, out) -> None`` that does what ``run``
        would with those tensors (same shapes, dtypes and alpha presence as ``problem``),
        doing the per-shape work (grid, workspace, argument packing) once here. Keep what
        it closes over valid across calls (e.g. a workspace that never shrinks).
        """

    @hookspec(firstresult=True)
    def bind_quantizing(self, problem: Problem, operands: Operands, tactic: Tactic, act_dtype: Any) -> Any:
        """Optional: the activation quantization fused into the GEMM, for ``Fp4Linear``'s
        NVFP4 layers (one kernel where the core runs two: quantizer, then GEMM).

        ``problem`` is the layer's W4A4 NVFP4 problem (``has_alpha``, ``act_dtype`` None) and
        ``operands`` its weight as ``bind`` gets it; ``act_dtype`` (torch.bfloat16 or
        torch.float16) is the dtype of the layer's input. Return
        ``launch(x, global_scale, weight_global_scale, alpha, out) -> None``: ``x`` the
        contiguous, 16-byte aligned (m, k) input, ``out`` the (m, n) output, the rest float32
        (1,) tensors or None. Static scale: ``global_scale`` and ``alpha`` given. Dynamic:
        ``weight_global_scale`` given, the global scale ``2688 / amax`` over the finite values
        of ``x`` and ``alpha = 1 / (gs * weight_global_scale)``. It must write exactly the bits
        of ``fp4core``'s quantizer with those arguments (``fp4core.formats.kernels.quantize_triton``)
        followed by ``run`` with ``tactic``. Return None where the backend has no such path for
        this (problem, tactic, dtype); the core then runs the two steps.
        """

    @hookspec(firstresult=True)
    def build(self, archs: list[str], progress: bool) -> list[str]:
        """Optional: compile ahead of time (or find in the JIT cache) every kernel this
        backend may run on GPUs of the architectures ``archs`` (nvcc names such as
        ``"sm_90a"``), so the first ``mm_fp4`` call does not wait for nvcc.

        Return one human-readable line per artifact (e.g. the library path). Skip
        architectures the backend has no kernels for. Raise ``fp4core.kit.jit.JitError`` when a
        build fails. ``progress`` asks for progress output on stderr. Called by
        ``fp4core build`` and ``fp4core.build()``; needs no GPU.
        """
