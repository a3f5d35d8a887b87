"""Every tactic of one backend, timed beside the bf16 baseline: which kernel variant wins where.

Behind ``fp4core bench --tactics`` and the plugins' own bench scripts. Each tactic is first
run once into a NaN-poisoned output and checked against the exact reference; only correct
tactics are timed. On CUDA the timings are CUDA-graph replays (GPU time per call, no host
launch cost, as a graph-captured model pays), the bf16 baseline (``torch.matmul`` of bf16
operands of the same shape, cuBLAS) timed the same way in the same process. On the CPU they
are wall-clock timings of eager calls.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch

from fp4core import api
from fp4core.dispatch.selector import selector
from fp4core.dispatch.hooks import Tactic
from fp4core.formats.reference import reference_mm
from fp4core.dispatch.timing import Timer, default_timer, graph_replay_us, median, rotation_sets
from fp4core.dispatch.tuner import make_sets, prepared_sets, run_checked, tactic_label


@dataclasses.dataclass
class TacticTiming:
    """One tactic on one shape: ``us`` per call (NaN when it was not timed) and why not."""

    tactic: Tactic
    label: str
    us: float = float("nan")
    rel_err: float = float("nan")  # against the exact reference
    error: str = ""  # "" when correct and timed

    @property
    def ok(self) -> bool:
        return not self.error


@dataclasses.dataclass
class ShapeSweep:
    """All tactics of ``backend`` on (m, n, k), in the backend's own order (its default first)."""

    m: int
    n: int
    k: int
    backend: str
    baseline_us: float
    timings: list[TacticTiming]

    @property
    def best(self) -> TacticTiming | None:
        """The fastest correct tactic, or None when none was correct."""
        ok = [t for t in self.timings if t.ok]
        return min(ok, key=lambda t: t.us) if ok else None

    @property
    def first(self) -> TacticTiming | None:
        """The backend's default (first) tactic."""
        return self.timings[0] if self.timings else None

    @property
    def max_rel_err(self) -> float:
        """The largest error of the correct tactics (NaN when none was correct)."""
        return max((t.rel_err for t in self.timings if t.ok), default=float("nan"))

    def speedup(self, timing: TacticTiming) -> float:
        """bf16 time / this tactic's time (higher is better)."""
        return self.baseline_us / timing.us


def sweep_tactics(backend: str, m: int, n: int, k: int, *, use_nvfp4: bool = True,
                  out_dtype: torch.dtype = torch.bfloat16, act_dtype: torch.dtype | None = None,
                  tactics: Iterable[Tactic] | None = None,
                  extra_tactics: Iterable[Tactic] = (),
                  graph: bool | None = None, reps: int = 10, timer: Timer | None = None,
                  progress: Callable[[str], None] = lambda s: None) -> ShapeSweep:
    """Check and time every tactic of ``backend`` on an (m, n, k) problem.

    Args:
        backend: name of a loaded backend that supports the problem on the current device
            (CUDA when available, else the CPU).
        m: rows of A and of the output: out (m, n) = A (m, k) @ B (n, k)^T.
        n: rows of B (the weight) and columns of the output.
        k: the shared dimension; operands are random FP4 of the format.
        use_nvfp4: NVFP4 (True) or MXFP4 operands, 128x4 scales.
        out_dtype: torch.bfloat16 or torch.float16.
        act_dtype: None for FP4 activations (``mm_fp4``); torch.bfloat16 or torch.float16 for
            weight-only problems (``mm_bf16_fp4``: A is that dtype, random normal).
        tactics: the tactics to try (default: ``backend.tactics(problem)``).
        extra_tactics: tactics to try after those (e.g. variants the backend does not
            propose by default), as the backend's tactic objects or their JSON dicts;
            duplicates are skipped.
        graph: time CUDA-graph replays (default: on CUDA) or eager calls.
        reps: calls per captured graph.
        timer: default ``fp4core.dispatch.timing.default_timer``.
        progress: called with one line per timed tactic.

    Returns:
        A ShapeSweep with one TacticTiming per tactic.

    Raises:
        ValueError: ``backend`` is not loaded or does not support the problem.
    """
    be = selector.registry.get(backend)
    if be is None:
        raise ValueError(f"backend: {backend!r} is not loaded (loaded: "
                         f"{', '.join(b.name for b in selector.registry.backends()) or 'none'})")
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    graph = cuda if graph is None else (graph and cuda)
    timer = timer or default_timer(cuda)
    problem = api.make_problem(m, n, k, use_nvfp4=use_nvfp4, out_dtype=out_dtype, device=device,
                               prepared=be.info.needs_prepare, act_dtype=act_dtype)
    answer = be.supports(problem)
    if not answer:
        raise ValueError(f"backend: {backend!r} does not support {problem.describe()}: {answer.reason}")
    sets = make_sets(problem)
    ref = reference_mm(problem, sets[0], torch.float32 if cuda else torch.float64)
    bsets = prepared_sets(be, problem, sets)

    def timed(run, n_sets: int) -> float:
        if graph:
            return graph_replay_us(run, n_sets, timer, reps=reps)
        return median(timer.measure(run, n_sets))

    nb = rotation_sets(2 * (m + n) * k, cuda)
    a16 = [torch.randn(m, k, device=device, dtype=torch.bfloat16) for _ in range(nb)]
    w16 = [torch.randn(n, k, device=device, dtype=torch.bfloat16) for _ in range(nb)]
    o16 = torch.empty(m, n, device=device, dtype=torch.bfloat16)
    baseline = timed(lambda i: torch.matmul(a16[i], w16[i].t(), out=o16), nb)
    del a16, w16, o16
    progress(f"{m}x{n}x{k}: bf16 {baseline:.1f} us")

    tactics = list(be.tactics(problem) if tactics is None else tactics)
    extra = [t if isinstance(t, Tactic) else be.tactic_from_json(t) for t in extra_tactics]
    tactics += [t for t in extra if t not in tactics]
    out = torch.empty(m, n, dtype=out_dtype, device=device)
    timings = []
    for tactic in tactics:
        timing = TacticTiming(tactic, tactic_label(tactic))
        timing.rel_err, why = run_checked(be, problem, bsets[0], tactic, ref)
        if why is not None:
            timing.error = why
        else:
            timing.us = timed(lambda i: be.run(problem, bsets[i], tactic, out), len(bsets))
        progress(f"{m}x{n}x{k}: {backend}[{timing.label}] " +
                 (timing.error or f"{timing.us:.1f} us, {baseline / timing.us:.2f}x bf16"))
        timings.append(timing)
    return ShapeSweep(m, n, k, backend, baseline, timings)
