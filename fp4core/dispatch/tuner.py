"""Time every (backend, tactic) candidate of one problem and pick the fastest.

Inputs are synthetic operands of the problem's exact shape and layouts, rotated across
several sets so L2 does not flatter small shapes. Before timing, each candidate runs once
into a NaN-poisoned output and is compared with the exact reference; a candidate that
raises or is wrong (relative error > 1e-2, or unwritten output) is dropped with its reason.

A candidate that breaks the CUDA context (an illegal address, a launch failure: every later
CUDA call in the process fails) cannot be dropped and tuning go on in that process, so
``tune`` raises ``TuningAborted`` naming it. ``fp4core tune`` runs tuning in a worker process
(``fp4core.dispatch.tune_worker``) that announces each candidate through ``isolation``; when the
worker dies the parent records the candidate it was running and restarts without it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import time
from typing import Callable, Iterator

import torch

from fp4core.dispatch.hooks import Tactic
from fp4core.dispatch.problem import Operands, Problem
from fp4core.formats.reference import TOLERANCE, reference_mm, relative_error
from fp4core.dispatch.registry import Backend
from fp4core.dispatch.synthetic import operand_bytes, random_operands
from fp4core.dispatch.tuning_cache import BackendRecord, CacheEntry
from fp4core.dispatch.timing import Timer, default_timer, median, rotation_sets

log = logging.getLogger("fp4core")

Progress = Callable[[str], None]


class TuningAborted(RuntimeError):
    """A candidate left the process unable to run CUDA work; ``candidate`` names it."""

    def __init__(self, candidate: str, reason: str):
        super().__init__(f"tuning stopped: {candidate} broke the CUDA context ({reason}); later "
                         "candidates cannot run in this process (fp4core tune isolates candidates "
                         "in a worker process and goes on without it)")
        self.candidate = candidate


@dataclasses.dataclass(frozen=True)
class Isolation:
    """How a tuning worker steers ``tune``: ``excluded`` maps a candidate label
    ("backend[tactic]") or a backend name to why it is left out (it killed an earlier
    worker); ``announce(label)`` is called before each candidate runs, so the parent knows
    which one was running if the process dies."""

    excluded: dict[str, str]
    announce: Callable[[str], None]


_isolation: contextvars.ContextVar[Isolation | None] = contextvars.ContextVar("fp4core_isolation", default=None)


@contextlib.contextmanager
def isolation(excluded: dict[str, str], announce: Callable[[str], None]) -> Iterator[None]:
    """Tune with these candidates left out and each candidate announced (see Isolation)."""
    token = _isolation.set(Isolation(dict(excluded), announce))
    try:
        yield
    finally:
        _isolation.reset(token)


def _cuda_context_alive(device: torch.device) -> bool:
    try:
        torch.cuda.synchronize(device)
        torch.ones(1, device=device).add_(1).item()
        return True
    except Exception:  # a sticky CUDA error: the context is gone
        return False


def tactic_label(tactic: Tactic | dict) -> str:
    """``tactic.label()``; for a tactic's JSON (as the cache holds it) the same text."""
    if isinstance(tactic, Tactic):
        return tactic.label()
    return ",".join(f"{k}={v}" for k, v in sorted(tactic.items())) or "default"


def prepared_sets(backend: Backend, problem: Problem, sets: list[Operands]) -> list[Operands]:
    """The operand sets as ``backend`` receives them (its own weight layout when prepared)."""
    if not problem.prepared:
        return sets
    weight_problem = problem.with_m(None)
    out = []
    for ops in sets:
        w = backend.prepare(weight_problem, Operands(None, None, ops.b, ops.b_scale))
        out.append(w.with_activation(ops.a, ops.a_scale, ops.alpha))
    return out


def make_sets(problem: Problem, n_sets: int | None = None, seed: int = 1234) -> list[Operands]:
    cuda = problem.device.is_cuda
    if n_sets is None:
        n_sets = rotation_sets(operand_bytes(problem), cuda)
    device = f"cuda:{problem.device.index}" if cuda else "cpu"
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return [random_operands(problem, device=device, generator=gen) for _ in range(n_sets)]


def _poisoned_out(problem: Problem, device) -> torch.Tensor:
    return torch.full((problem.m, problem.n), float("nan"), dtype=problem.out_dtype, device=device)


def run_checked(backend: Backend, problem: Problem, ops: Operands, tactic: Tactic,
                ref: torch.Tensor) -> tuple[float, str | None]:
    """Run once into a NaN-poisoned output; return (relative error vs ``ref``, None if
    correct else the reason). The error is NaN when the run raised."""
    out = _poisoned_out(problem, ref.device)
    try:
        backend.run(problem, ops, tactic, out)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
    except Exception as exc:  # a failing candidate is dropped, not fatal
        return float("nan"), f"raised {type(exc).__name__}: {exc}"
    err = relative_error(out, ref)
    if not err <= TOLERANCE:
        return err, f"wrong answer: relative error {err:.3g} > {TOLERANCE:g}"
    return err, None


def check_candidate(backend: Backend, problem: Problem, ops: Operands, tactic: Tactic,
                    ref: torch.Tensor) -> str | None:
    """Run once into a poisoned output; return None if correct, else the reason."""
    return run_checked(backend, problem, ops, tactic, ref)[1]


#: Backends whose best tactic is within this factor of the fastest go to the runoff.
RUNOFF_WITHIN = 1.3


def _runoff(problem: Problem, per_backend: dict[str, dict], finalists: dict[str, tuple],
            timer: Timer, say: Progress, device: torch.device) -> None:
    """Re-time the best tactic of every backend close to the fastest with their batches
    alternating (``Timer.measure_interleaved``), and store those medians as their ``us``.

    The tactic sweep times candidates one after another over seconds to minutes, so clock or
    thermal drift can put a slower backend first (seen on an H200: a prefill shape went to a
    backend 12 % slower than the other in the same run's interleaved benchmark); alternating
    batches expose the finalists to the same drift. The sweep's time stays as ``sweep_us``."""
    fastest = min(rec["us"] for rec in per_backend.values())
    names = [n for n, rec in per_backend.items() if rec["us"] <= fastest * RUNOFF_WITHIN]
    if len(names) < 2:
        return
    runs = []
    for n in names:
        backend, bsets, tactic = finalists[n]
        out = torch.empty((problem.m, problem.n), dtype=problem.out_dtype, device=device)
        runs.append(((lambda i, b=backend, s=bsets, t=tactic, o=out: b.run(problem, s[i], t, o)), len(bsets)))
    for n, samples in zip(names, timer.measure_interleaved(runs)):
        rec = per_backend[n]
        rec["sweep_us"], rec["us"] = rec["us"], median(samples)
    say("  runoff (interleaved): " + ", ".join(f"{n} {per_backend[n]['us']:.1f} us" for n in names))


def tune(problem: Problem, candidates: list[Backend], timer: Timer | None = None,
         progress: Progress | None = None) -> CacheEntry:
    """Tune ``problem`` over ``candidates``; return the tuning-cache entry."""
    say = progress or (lambda msg: log.info("%s", msg))
    timer = timer or default_timer(problem.device.is_cuda)
    t_start = time.perf_counter()
    sets = make_sets(problem)
    ref = reference_mm(problem, sets[0], torch.float32 if problem.device.is_cuda else torch.float64)
    say(f"tuning {problem.describe()}: {len(candidates)} backend(s), {len(sets)} rotating input set(s)")
    per_backend: dict[str, dict] = {}
    finalists: dict[str, tuple] = {}  # name -> (backend, its input sets, best tactic)
    dropped: dict[str, str] = {}
    iso = _isolation.get()
    excluded = iso.excluded if iso is not None else {}
    announce = iso.announce if iso is not None else (lambda label: None)
    for backend in candidates:
        if backend.name in excluded:
            dropped[backend.name] = excluded[backend.name]
            say(f"  {backend.name}: dropped ({excluded[backend.name]})")
            continue
        announce(backend.name)  # tactics() and prepare() run next
        try:
            tactics = backend.tactics(problem)
            bsets = prepared_sets(backend, problem, sets)
        except Exception as exc:
            dropped[backend.name] = f"tactics/prepare raised {type(exc).__name__}: {exc}"
            say(f"  {backend.name}: dropped ({dropped[backend.name]})")
            continue
        if not tactics:  # recorded, so the entry counts this backend as seen (untuned())
            dropped[backend.name] = "tactics() returned no tactic"
            say(f"  {backend.name}: dropped ({dropped[backend.name]})")
            continue
        for tactic in tactics:
            label = f"{backend.name}[{tactic_label(tactic)}]"
            if label in excluded:
                dropped[label] = excluded[label]
                say(f"  {label}: dropped ({excluded[label]})")
                continue
            announce(label)
            why = check_candidate(backend, problem, bsets[0], tactic, ref)
            if why is not None and why.startswith("raised") and ref.is_cuda \
                    and not _cuda_context_alive(ref.device):
                raise TuningAborted(label, why)
            if why is not None:
                dropped[label] = why
                say(f"  {label}: dropped ({why})")
                continue
            out = torch.empty((problem.m, problem.n), dtype=problem.out_dtype, device=ref.device)
            us = median(timer.measure(lambda i: backend.run(problem, bsets[i], tactic, out), len(bsets)))
            say(f"  {label}: {us:.1f} us")
            best = per_backend.get(backend.name)
            if best is None or us < best["us"]:
                per_backend[backend.name] = {"version": backend.version, "tactic": tactic, "us": us}
                finalists[backend.name] = (backend, bsets, tactic)
    if not per_backend:
        raise RuntimeError(f"tuning {problem.describe()}: every candidate failed: {dropped}")
    announce("runoff")
    _runoff(problem, per_backend, finalists, timer, say, ref.device)
    name, rec = min(per_backend.items(), key=lambda kv: kv[1]["us"])
    say(f"  -> {name}[{tactic_label(rec['tactic'])}] {rec['us']:.1f} us "
        f"(tuned in {time.perf_counter() - t_start:.1f} s)")
    records = {n: BackendRecord(r["version"], r["tactic"].to_json(), r["us"], r.get("sweep_us"))
               for n, r in per_backend.items()}
    return CacheEntry(name, rec["version"], rec["tactic"].to_json(), rec["us"], records, dropped, problem.m)
