"""The selector: the one object that decides which backend and tactic run a problem.

It owns the backend registry, the tuning cache and the tuning state, decides which weight
layout each backend receives (``weight_for``) and runs the call with fall-back (``run``), so
``mm_fp4`` reads validate -> ``selector.run``.

For ``auto`` the candidates are the enabled backends whose ``supports`` says yes (a backend
that needs its own weight layout also needs a prepared weight), ordered by the heuristic
priority they declare for the device and M regime. The choice is then, in order: a cached
tuning result for the problem's bucket; a fresh tuning run when tuning is on (inside
``fp4core.autotune()``, which is context-local: other threads and tasks are not affected, or
with FP4CORE_AUTOTUNE=1) and no CUDA graph is being captured; else the first candidate with
its first tactic. Resolved choices are memoised per exact problem, so a tuned call costs one
dict lookup.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import threading
from typing import Callable, Iterator

import torch

from fp4core.dispatch.hooks import Tactic
from fp4core.dispatch.problem import Operands, Problem
from fp4core.dispatch.registry import ENV_ONLY, KNOWN_PACKAGES, Backend, Registry
from fp4core.dispatch.tuner import Progress, tune
from fp4core.dispatch.tuning_cache import CacheEntry, TuningCache, problem_key
from fp4core.env import env_flag
from fp4core.errors import BackendFailedError, BackendNotInstalledError, BackendUnsupportedError, NoBackendError

ENV_AUTOTUNE = "FP4CORE_AUTOTUNE"
log = logging.getLogger("fp4core")


@dataclasses.dataclass(frozen=True)
class Choice:
    """The backend and tactic a call uses, and where the choice came from
    ("cache", "tuned", "heuristic" or "explicit")."""

    backend: Backend
    tactic: Tactic
    source: str


@dataclasses.dataclass
class Explanation:
    """What ``auto`` (or a named backend) would do for a problem, and why. ``untuned``: the
    candidates the problem's tuning-cache entry did not time at their installed version (a
    plugin upgraded or installed since); the entry is re-tuned when tuning is on."""

    problem: Problem
    choice: Choice | None
    candidates: list[str]
    excluded: dict[str, str]
    cache_key: str
    cache_entry: CacheEntry | None
    error: str = ""
    untuned: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"problem:   {self.problem.describe()}", f"cache key: {self.cache_key}"]
        if self.choice is not None:
            lines.append(f"choice:    {self.choice.backend.name} [{self.choice.tactic.label()}] "
                         f"from {self.choice.source}")
        else:
            lines.append(f"choice:    none ({self.error})")
        lines.append("candidates (heuristic order): " + (", ".join(self.candidates) or "none"))
        if self.cache_entry:
            for name, rec in sorted(self.cache_entry.per_backend.items(), key=lambda kv: kv[1].us):
                lines.append(f"  tuned {name}: {rec.us:.1f} us")
            if self.untuned:
                lines.append(f"  not timed at their installed version: {', '.join(self.untuned)} "
                             "(re-tuned when tuning is on)")
            for label, why in self.cache_entry.dropped.items():
                lines.append(f"  dropped while tuning {label}: {why}")
        for name, why in sorted(self.excluded.items()):
            lines.append(f"excluded {name}: {why}")
        return "\n".join(lines)


@dataclasses.dataclass
class _TuningMode:
    """The tuning state of one ``autotune()`` context (a context variable, not a global)."""

    force: bool
    progress: Progress | None
    tuned: set[str] = dataclasses.field(default_factory=set)  # keys tuned here (force: once)


_tuning_mode: contextvars.ContextVar[_TuningMode | None] = contextvars.ContextVar("fp4core_tuning", default=None)
_warned_per_call_prepare: set[str] = set()


class Selector:
    """Chooses and runs (backend, tactic) per call. One instance, ``selector``, serves the
    process; tests may build their own from a Registry and a TuningCache."""

    def __init__(self, registry: Registry, cache: TuningCache):
        self.registry = registry
        self.cache = cache
        self._memo: dict[tuple[Problem, str, bool], Choice] = {}
        self._memo_gen: tuple[int, int, int] | None = None
        self._lock = threading.RLock()
        self._epoch = 0
        # (problem, backend name) -> why: backends whose run() raised on that problem; auto
        # leaves them out for the rest of the process instead of failing every call
        self._failed: dict[tuple[Problem, str], str] = {}
        self.timer = None  # a timing.Timer to use instead of the default (tests)

    @property
    def generation(self) -> tuple[int, int, int]:
        """Changes whenever a choice may change (backends, tuning cache, entering or leaving
        a tuning context, a failed backend): callers that cache choices compare it."""
        return (self.registry.generation, self.cache.generation, self._epoch)

    # -- tuning mode -----------------------------------------------------------------------
    def tuning_enabled(self) -> bool:
        """Inside ``fp4core.autotune()`` in this context, or with FP4CORE_AUTOTUNE switched on."""
        return _tuning_mode.get() is not None or env_flag(ENV_AUTOTUNE)

    @contextlib.contextmanager
    def tuning(self, force: bool = False, progress: Progress | None = None) -> Iterator[None]:
        """Tune untuned (with ``force``: every) problem buckets met in this context, once each;
        ``progress`` receives one line per candidate. Nested contexts inherit ``force`` and
        ``progress`` and share the buckets already tuned."""
        outer = _tuning_mode.get()
        mode = _TuningMode(force or (outer is not None and outer.force),
                           progress or (outer.progress if outer is not None else None),
                           outer.tuned if outer is not None else set())
        token = _tuning_mode.set(mode)
        self._bump()  # plans made outside (Fp4Linear) are re-made, so they tune
        try:
            yield
        finally:
            _tuning_mode.reset(token)
            self._bump()

    def _bump(self) -> None:
        with self._lock:
            self._epoch += 1

    # -- failures --------------------------------------------------------------------------
    def mark_failed(self, problem: Problem, backend: str, why: str) -> None:
        """Leave ``backend`` out of ``auto`` for ``problem`` from now on (its run raised)."""
        with self._lock:
            self._failed[(problem, backend)] = why
            self._epoch += 1

    def failures(self) -> dict[tuple[Problem, str], str]:
        """(problem, backend) -> why, for every backend left out after a failed run."""
        return dict(self._failed)

    # -- candidates ------------------------------------------------------------------------
    def candidates(self, problem: Problem) -> tuple[list[Backend], dict[str, str]]:
        """Backends that can run ``problem`` (heuristic order) and the others' reasons."""
        ok: list[Backend] = []
        excluded: dict[str, str] = {}
        for be in self.registry.backends():
            if be.info.needs_prepare and not problem.prepared:
                excluded[be.name] = ("needs its own weight layout: pass a weight from "
                                     "fp4core.prepare(b, b_descale) to let auto consider it")
                continue
            failed = self._failed.get((problem, be.name))
            if failed is not None:
                excluded[be.name] = f"left out after a failed run in this process: {failed}"
                continue
            answer = be.supports(problem)
            if answer:
                ok.append(be)
            else:
                excluded[be.name] = answer.reason or "unsupported (no reason given)"
        for b in self.registry.broken():
            excluded[b.name] = f"failed to load: {b.error}"
        for name, why in self.registry.disabled().items():
            excluded[name] = f"disabled: {why}"
        ok.sort(key=lambda b: (-b.info.priority_for(problem), b.name))
        return ok, excluded

    def not_installed_message(self, name: str) -> str:
        """Why backend ``name`` cannot be used: broken, disabled or not installed (with the
        package to install when fp4core knows it)."""
        broken = {b.name: b for b in self.registry.broken()}
        if name in broken:
            return f"backend {name!r} is installed but failed to load: {broken[name].error}"
        disabled = self.registry.disabled()
        if name in disabled or (os.environ.get(ENV_ONLY) and self.registry.get(name) is None
                                and name in KNOWN_PACKAGES):
            return f"backend {name!r} is disabled ({disabled.get(name, 'not in ' + ENV_ONLY)})"
        known = sorted(b.name for b in self.registry.backends())
        pkg = KNOWN_PACKAGES.get(name)
        hint = f": pip install {pkg}" if pkg else " (no package of that name is known to fp4core)"
        return f"backend {name!r} is not installed{hint}. Installed: {', '.join(known)}"

    # -- choosing --------------------------------------------------------------------------
    def choose(self, problem: Problem, backend: str = "auto") -> Choice:
        """The (backend, tactic) for ``problem``: memoised until ``generation`` changes."""
        gen = self.generation
        if gen != self._memo_gen:
            self._memo.clear()
            self._memo_gen = gen
        # keyed by whether an autotune() context is active here (a context-variable read; the
        # environment is read only on a miss: a hit costs one dict lookup)
        key = (problem, backend, _tuning_mode.get() is not None)
        choice = self._memo.get(key)
        if choice is not None:
            return choice
        with self._lock:
            choice = self._resolve(problem, backend, may_tune=True)
            if not (choice.source == "heuristic" and self.tuning_enabled()):
                self._memo[key] = choice
            return choice

    def _can_tune_now(self, problem: Problem) -> bool:
        if not self.tuning_enabled():
            return False
        if problem.device.is_cuda and torch.cuda.is_current_stream_capturing():
            return False  # never tune inside CUDA-graph capture
        return True

    def _cached(self, key: str, ok: list[Backend]) -> tuple[CacheEntry | None, Backend | None, Tactic | None]:
        """The cache entry for ``key`` among ``ok`` and its winner with the typed tactic; a
        tactic the installed backend cannot read counts as no entry (logged)."""
        entry = self.cache.lookup(key, {b.name: b.version for b in ok})
        if entry is None:
            return None, None, None
        be = next(b for b in ok if b.name == entry.backend)
        try:
            return entry, be, be.tactic_from_json(entry.tactic)
        except ValueError as exc:
            log.warning("tuning cache entry %s: %s; ignoring it", key, exc)
            return None, None, None

    def _resolve(self, problem: Problem, name: str, may_tune: bool) -> Choice:
        key = problem_key(problem)
        if name != "auto":
            be = self.registry.get(name)
            if be is None:
                raise BackendNotInstalledError(self.not_installed_message(name))
            answer = be.supports(problem)
            if not answer:
                raise BackendUnsupportedError(f"backend {name!r} does not support {problem.describe()}: "
                                              f"{answer.reason}")
            tactic = self.cache.tactic_for(key, be.name, be.version)
            if tactic is not None:
                try:
                    return Choice(be, be.tactic_from_json(tactic), "explicit")
                except ValueError as exc:
                    log.warning("tuning cache entry %s: %s; using the default tactic", key, exc)
            return Choice(be, be.tactics(problem)[0], "explicit")
        ok, excluded = self.candidates(problem)
        if not ok:
            reasons = "\n".join(f"  {n}: {why}" for n, why in sorted(excluded.items()))
            raise NoBackendError(f"no backend supports {problem.describe()}:\n{reasons}")
        entry, winner, tactic = self._cached(key, ok)
        mode = _tuning_mode.get()
        retune = mode is not None and mode.force and key not in mode.tuned
        # An entry that did not time every candidate at its installed version (a plugin was
        # upgraded or installed since) still names a valid winner, but maybe not the fastest
        # now: re-tune it when tuning is on (once per context), else use it as it is.
        if entry is not None and not retune and (mode is None or key not in mode.tuned):
            retune = bool(self.cache.untuned(key, {b.name: b.version for b in ok}))
        if (entry is None or retune) and may_tune and self._can_tune_now(problem):
            progress = mode.progress if mode is not None else None
            entry = tune(problem, ok, timer=self.timer, progress=progress)
            self.cache.store(key, entry)
            if mode is not None:
                mode.tuned.add(key)
            else:  # tune-on-first-use (FP4CORE_AUTOTUNE): persist right away
                self.cache.save_or_warn()
            be = next(b for b in ok if b.name == entry.backend)
            return Choice(be, be.tactic_from_json(entry.tactic), "tuned")
        if entry is not None:
            return Choice(winner, tactic, "cache")
        refusals = []
        for be in ok:  # the first candidate whose tactics hook works
            try:
                return Choice(be, be.tactics(problem)[0], "heuristic")
            except BackendFailedError as exc:
                log.warning("%s; auto tries the next backend", exc)
                refusals.append(f"  {be.name}: {exc}")
        raise NoBackendError(f"no backend could run {problem.describe()}:\n" + "\n".join(refusals))

    def explain(self, problem: Problem, backend: str = "auto") -> Explanation:
        """What ``choose`` would answer now, without tuning, and why (see Explanation)."""
        ok, excluded = self.candidates(problem)
        key = problem_key(problem)
        entry = self.cache.lookup(key, {b.name: b.version for b in ok})
        try:
            with self._lock:
                choice = self._resolve(problem, backend, may_tune=False)
            err = ""
        except Exception as exc:
            choice, err = None, str(exc)
        untuned = self.cache.untuned(key, {b.name: b.version for b in ok}) if entry is not None else []
        return Explanation(problem, choice, [b.name for b in ok], excluded, key, entry, err, untuned)

    # -- weights and running ---------------------------------------------------------------
    def weight_for(self, be: Backend, problem: Problem, ops: Operands,
                   weight=None) -> tuple[Problem, Operands]:
        """The problem and operands ``be.run`` gets: the one place that decides which weight
        layout a backend receives.

        ``ops`` holds the activation (and, for a plain call, the canonical weight); ``weight``
        is the caller's PreparedWeight or None. A backend with its own prepared copy gets it
        (problem marked prepared); one without a prepare hook, or whose hook declined this
        weight, gets the canonical weight and a plain problem; one that needs its own layout
        and has none gets it prepared on this call (with a one-time warning: use
        ``fp4core.prepare``)."""
        if weight is not None:
            own = weight.by_backend.get(be.name)
            if own is not None:
                return problem, own.with_activation(ops.a, ops.a_scale, ops.alpha)
            ops = weight.canonical.with_activation(ops.a, ops.a_scale, ops.alpha)
        if not be.info.needs_prepare:
            return problem.plain, ops
        if be.name not in _warned_per_call_prepare:
            _warned_per_call_prepare.add(be.name)
            log.warning("backend %r wants its own weight layout and got a plain weight: preparing it on "
                        "every call. Use fp4core.prepare(b, b_descale) once instead.", be.name)
        prepared = problem.as_prepared
        own = be.prepare(prepared.with_m(None), Operands(None, None, ops.b, ops.b_scale))
        return prepared, own.with_activation(ops.a, ops.a_scale, ops.alpha)

    def run(self, problem: Problem, ops: Operands, weight, backend: str, out: torch.Tensor) -> torch.Tensor:
        """Select and run: the validated core of ``mm_fp4`` (no argument checks here).

        ``ops`` holds the activation (and the canonical weight of a plain call), ``weight`` the
        PreparedWeight or None. With ``backend="auto"``, a backend whose ``run`` raises is left
        out of ``auto`` for this problem (logged once) and the next choice runs instead; an
        explicit backend's failure, a failure during CUDA-graph capture and a CUDA error (after
        which the CUDA context is unusable) are raised as they are."""
        while True:
            choice = self.choose(problem, backend)
            be = choice.backend
            run_problem, run_ops = self.weight_for(be, problem, ops, weight)
            try:
                be.run(run_problem, run_ops, choice.tactic, out)
                return out
            except BackendFailedError as exc:
                self.after_failure(backend, problem, be, exc)

    def after_failure(self, requested: str, problem: Problem, be: Backend, exc: BackendFailedError) -> None:
        """Re-raise ``exc`` unless ``auto`` may go on without ``be``; then leave ``be`` out
        for ``problem`` (logged) so the next choice differs."""
        if not may_fall_back(requested, problem, exc):
            raise exc
        log.warning("%s; auto leaves %r out for %s from now on", exc, be.name, problem.describe())
        self.mark_failed(problem, be.name, str(exc.__cause__ or exc))


def may_fall_back(requested: str, problem: Problem, exc: BackendFailedError) -> bool:
    """Whether ``auto`` may try another backend after ``exc``: not for a named backend, not
    after a CUDA error (the context is unusable), not during CUDA-graph capture."""
    if requested != "auto":
        return False
    cause = exc.__cause__
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(cause, accel) or "CUDA error" in str(cause):
        return False  # the context is gone: no other backend can run either
    return not (problem.device.is_cuda and torch.cuda.is_current_stream_capturing())


def _builtin_backends() -> list:
    from fp4core.dispatch.torch_backend import TorchBackend

    return [TorchBackend()]


#: the process's selector: registry, tuning cache and tuning state in one place
selector = Selector(Registry(builtins=_builtin_backends), TuningCache())
