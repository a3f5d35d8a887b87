"""Backend selection: ``auto`` and named backends, the heuristic and tuned choices.

For ``auto`` the candidates are the enabled backends whose ``supports`` says yes (a backend
that needs its own weight layout also needs a prepared weight), ordered by the heuristic
priority they declare for the device and M regime. The choice is then, in order: a cached
tuning result for the problem's bucket; a fresh tuning run when tuning is on (inside
``fp4core.autotune()`` or with FP4CORE_AUTOTUNE=1) and no CUDA graph is being captured;
else the first candidate with its first tactic. Resolved choices are memoised per exact
problem, so a tuned call costs one dict lookup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from typing import Iterator

import torch

from fp4core.dispatch import state
from fp4core.env import env_flag
from fp4core.errors import BackendFailedError, BackendNotInstalledError, BackendUnsupportedError, NoBackendError
from fp4core.dispatch.hooks import Tactic
from fp4core.dispatch.problem import Problem
from fp4core.dispatch.registry import ENV_ONLY, KNOWN_PACKAGES, Backend
from fp4core.dispatch.tuner import Progress, tune
from fp4core.dispatch.tuning_cache import problem_key

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
    """What ``auto`` (or a named backend) would do for a problem, and why."""

    problem: Problem
    choice: Choice | None
    candidates: list[str]
    excluded: dict[str, str]
    cache_key: str
    cache_entry: dict | None
    error: str = ""

    def __str__(self) -> str:
        lines = [f"problem:   {self.problem.describe()}", f"cache key: {self.cache_key}"]
        if self.choice is not None:
            from fp4core.dispatch.tuner import tactic_label
            lines.append(f"choice:    {self.choice.backend.name} [{tactic_label(self.choice.tactic)}] "
                         f"from {self.choice.source}")
        else:
            lines.append(f"choice:    none ({self.error})")
        lines.append("candidates (heuristic order): " + (", ".join(self.candidates) or "none"))
        if self.cache_entry:
            for name, rec in sorted(self.cache_entry.get("per_backend", {}).items(), key=lambda kv: kv[1]["us"]):
                lines.append(f"  tuned {name}: {rec['us']:.1f} us")
            for label, why in self.cache_entry.get("dropped", {}).items():
                lines.append(f"  dropped while tuning {label}: {why}")
        for name, why in sorted(self.excluded.items()):
            lines.append(f"excluded {name}: {why}")
        return "\n".join(lines)


def not_installed_message(name: str) -> str:
    broken = {b.name: b for b in state.registry.broken()}
    if name in broken:
        return f"backend {name!r} is installed but failed to load: {broken[name].error}"
    disabled = state.registry.disabled()
    if name in disabled or (os.environ.get(ENV_ONLY) and state.registry.get(name) is None
                            and name in KNOWN_PACKAGES):
        return f"backend {name!r} is disabled ({disabled.get(name, 'not in ' + ENV_ONLY)})"
    known = sorted(b.name for b in state.registry.backends())
    pkg = KNOWN_PACKAGES.get(name)
    hint = f": pip install {pkg}" if pkg else " (no package of that name is known to fp4core)"
    return f"backend {name!r} is not installed{hint}. Installed: {', '.join(known)}"


class Dispatcher:
    """Chooses (backend, tactic) per call. One global instance; tests may make their own."""

    def __init__(self):
        self._memo: dict[tuple[Problem, str], Choice] = {}
        self._memo_gen: tuple[int, int, int] | None = None
        self._lock = threading.RLock()
        self._tuning_depth = 0
        self._force = False
        self._tuned_keys: set[str] = set()
        self._epoch = 0
        # (problem, backend name) -> why: backends whose run() raised on that problem; auto
        # leaves them out for the rest of the process instead of failing every call
        self._failed: dict[tuple[Problem, str], str] = {}
        self.timer = None  # a timing.Timer to use instead of the default (tests)
        self.progress: Progress | None = None

    @property
    def generation(self) -> tuple[int, int, int]:
        """Changes whenever a choice may change (backends, tuning cache, tuning mode, a
        failed backend): callers that cache choices compare it."""
        return (state.registry.generation, state.tuning_cache.generation, self._epoch)

    # -- tuning mode -----------------------------------------------------------------------
    def tuning_enabled(self) -> bool:
        """Inside ``fp4core.autotune()``, or with FP4CORE_AUTOTUNE switched on."""
        return self._tuning_depth > 0 or env_flag(ENV_AUTOTUNE)

    @contextlib.contextmanager
    def tuning(self, force: bool = False) -> Iterator[None]:
        with self._lock:
            self._tuning_depth += 1
            prev_force, self._force = self._force, self._force or force
            self._epoch += 1
        try:
            yield
        finally:
            with self._lock:
                self._tuning_depth -= 1
                self._force = prev_force
                if self._tuning_depth == 0:
                    self._tuned_keys.clear()
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
        for be in state.registry.backends():
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
        for b in state.registry.broken():
            excluded[b.name] = f"failed to load: {b.error}"
        for name, why in state.registry.disabled().items():
            excluded[name] = f"disabled: {why}"
        ok.sort(key=lambda b: (-b.info.priority_for(problem), b.name))
        return ok, excluded

    # -- choosing --------------------------------------------------------------------------
    def choose(self, problem: Problem, backend: str = "auto") -> Choice:
        """The (backend, tactic) for ``problem``: memoised until ``generation`` changes."""
        gen = self.generation
        if gen != self._memo_gen:
            self._memo.clear()
            self._memo_gen = gen
        key = (problem, backend)
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

    def _resolve(self, problem: Problem, name: str, may_tune: bool) -> Choice:
        cache = state.tuning_cache
        key = problem_key(problem)
        if name != "auto":
            be = state.registry.get(name)
            if be is None:
                raise BackendNotInstalledError(not_installed_message(name))
            answer = be.supports(problem)
            if not answer:
                raise BackendUnsupportedError(f"backend {name!r} does not support {problem.describe()}: "
                                              f"{answer.reason}")
            tactic = cache.tactic_for(key, be.name, be.version)
            return Choice(be, tactic if tactic is not None else be.tactics(problem)[0], "explicit")
        ok, excluded = self.candidates(problem)
        if not ok:
            reasons = "\n".join(f"  {n}: {why}" for n, why in sorted(excluded.items()))
            raise NoBackendError(f"no backend supports {problem.describe()}:\n{reasons}")
        by_name = {b.name: b for b in ok}
        entry = cache.lookup(key, {b.name: b.version for b in ok})
        retune = self._force and key not in self._tuned_keys
        if (entry is None or retune) and may_tune and self._can_tune_now(problem):
            entry = tune(problem, ok, timer=self.timer, progress=self.progress)
            cache.store(key, entry)
            self._tuned_keys.add(key)
            if self._tuning_depth == 0:  # tune-on-first-use: persist right away
                cache.save_or_warn()
            return Choice(by_name[entry["backend"]], entry["tactic"], "tuned")
        if entry is not None:
            return Choice(by_name[entry["backend"]], entry["tactic"], "cache")
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
        entry = state.tuning_cache.lookup(key, {b.name: b.version for b in ok})
        try:
            with self._lock:
                choice = self._resolve(problem, backend, may_tune=False)
            err = ""
        except Exception as exc:
            choice, err = None, str(exc)
        return Explanation(problem, choice, [b.name for b in ok], excluded, key, entry, err)


dispatcher = Dispatcher()
