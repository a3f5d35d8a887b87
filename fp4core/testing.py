"""Helpers a backend author imports to test a plugin the way fp4core tests its own.

    from fp4core.testing import check_backend, registered

    with registered(MyBackend()):
        check_backend("mine", fp4core.make_problem(7, 256, 128))

``check_backend`` runs every tactic on fresh random operands into a NaN-poisoned output and
compares with the exact reference (relative error <= 1e-2), through the backend's own
``prepare`` when it has one, and through ``mm_fp4`` with the backend named.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import torch

from . import state
from .hookspec import Tactic
from .problem import Operands, Problem
from .reference import TOLERANCE, reference_mm, relative_error
from .synthetic import random_operands
from .tuner import prepared_sets, tactic_label


@contextlib.contextmanager
def registered(plugin: Any) -> Iterator[Any]:
    """Register ``plugin`` for the duration of the block; yields the loaded Backend."""
    backend = state.registry.register(plugin, origin="registered by fp4core.testing")
    try:
        yield backend
    finally:
        state.registry.unregister(backend.name)


@dataclasses.dataclass
class CheckResult:
    tactic: Tactic
    error: float

    def __str__(self) -> str:
        return f"[{tactic_label(self.tactic)}] relative error {self.error:.3g}"


def check_backend(name: str, problem: Problem, *, seed: int = 0, tactics: list[Tactic] | None = None,
                  tolerance: float = TOLERANCE) -> list[CheckResult]:
    """Check every tactic of backend ``name`` on ``problem`` against the exact reference.

    Fresh random operands (seeded by ``seed``) on the problem's device; the output is
    filled with NaN before each run so unwritten elements fail. Raises AssertionError with
    every failing tactic; returns the per-tactic errors.
    """
    backend = state.registry.get(name)
    if backend is None:
        raise AssertionError(f"backend {name!r} is not registered")
    answer = backend.supports(problem)
    if not answer:
        raise AssertionError(f"backend {name!r} does not support {problem.describe()}: {answer.reason}")
    device = f"cuda:{problem.device.index}" if problem.device.is_cuda else "cpu"
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    ops = random_operands(problem, device=device, generator=gen)
    ref = reference_mm(problem, ops, torch.float64)
    run_ops = prepared_sets(backend, problem, [ops])[0] if problem.prepared else ops
    results, failures = [], []
    for tactic in (tactics if tactics is not None else backend.tactics(problem)):
        out = torch.full((problem.m, problem.n), float("nan"), dtype=problem.out_dtype, device=device)
        backend.run(problem, run_ops, tactic, out)
        err = relative_error(out, ref)
        results.append(CheckResult(tactic, err))
        if not err <= tolerance:
            failures.append(f"{name}[{tactic_label(tactic)}] on {problem.describe()}: "
                            f"relative error {err:.3g} > {tolerance:g}")
    if failures:
        raise AssertionError("\n".join(failures))
    return results


def canonical_operands(problem: Problem, seed: int = 0) -> Operands:
    """Fresh random canonical operands for ``problem`` on its device."""
    device = f"cuda:{problem.device.index}" if problem.device.is_cuda else "cpu"
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return random_operands(problem, device=device, generator=gen)
