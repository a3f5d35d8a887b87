"""Timing of a GPU (or CPU) call, shared by the tuner and the benchmark.

A measured function takes an input-set index; timers rotate through ``n_sets`` sets so
repeated calls do not find their operands in L2. CUDA timings use events around batches
of calls after warm-up and return per-call samples in microseconds (take the median).

Each CUDA batch starts behind a short device-side spin (``torch.cuda._sleep``) that lasts
longer than the host needs to submit one call. The host is then ahead of the device when the
start event fires, as it is in a pipelined model, and the time is the device's alone.
Without that lead a batch of one or two long calls (the common case: batches are ~1 ms)
also counts the host's submit latency of the first call after the previous batch's
synchronisation. That inflated backends whose calls spend 100-200 us on the host (several
launches, a cuDNN execute) against bf16's single launch: fp4-cudnn by 80-125 us (10-15 %)
at M = 4096 on 8192^2 on an H200. A host
that cannot keep up even with the lead (a call needing more host time than device time) is
still measured as it is: back-to-back eager calls.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

RunFn = Callable[[int], None]


class Timer(Protocol):
    def measure(self, run: RunFn, n_sets: int) -> list[float]:
        """Per-call times in microseconds, one sample per batch of calls."""

    def measure_interleaved(self, runs: list[tuple[RunFn, int]]) -> list[list[float]]:
        """Like ``measure`` for several ``(run, n_sets)`` at once, their batches alternating
        (a, b, a, b, ...) so that clock and thermal drift hit all of them alike: use it
        for ratios such as a backend against the bf16 baseline."""


@dataclass(frozen=True)
class Batch:
    """How one run is timed: ``calls`` per batch, after a device-side lead of ``lead_us``."""

    calls: int
    lead_us: float = 0.0


class _BatchTimer:
    """The measuring loop both timers share: warm each run up, then take ``samples`` batches
    of each in turn. Subclasses say how to warm up (and what a batch is) and how to time one
    batch."""

    samples: int

    def _warm(self, run: RunFn, n_sets: int) -> Batch:
        raise NotImplementedError

    def _batch_us(self, run: RunFn, n_sets: int, batch: Batch, start_index: int) -> float:
        """Microseconds per call over ``batch.calls`` calls from input set ``start_index`` on."""
        raise NotImplementedError

    def measure(self, run: RunFn, n_sets: int) -> list[float]:
        return self.measure_interleaved([(run, n_sets)])[0]

    def measure_interleaved(self, runs: list[tuple[RunFn, int]]) -> list[list[float]]:
        batches = [self._warm(run, n) for run, n in runs]
        out: list[list[float]] = [[] for _ in runs]
        for s in range(self.samples):
            for j, (run, n) in enumerate(runs):
                out[j].append(self._batch_us(run, n, batches[j], s * batches[j].calls))
        return out


@functools.lru_cache(maxsize=None)
def _spin_cycles_per_us(device: int) -> float:
    """Clock cycles of ``torch.cuda._sleep`` per microsecond on ``device`` (measured once)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cycles = 1 << 21
    torch.cuda._sleep(cycles)  # first launch outside the measurement
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / max(start.elapsed_time(end) * 1000.0, 1e-3)


def device_spin(us: float) -> None:
    """Keep the current stream busy for about ``us`` microseconds (no host wait)."""
    if us > 0:
        torch.cuda._sleep(int(us * _spin_cycles_per_us(torch.cuda.current_device())))


class CudaEventTimer(_BatchTimer):
    """CUDA events around batches of calls on the current stream.

    Args:
        warmup_ms: time spent calling before measuring (clocks, caches, lazy init).
        sample_ms: target length of one timed batch (short kernels get many calls).
        samples: number of batches.
        lead: start each batch behind a device-side spin of twice the host time of one call
            (at most ``max_lead_us``), so that the device time is measured without the host's
            submit latency (see the module docstring). False: no spin.
    """

    max_lead_us = 2000.0

    def __init__(self, warmup_ms: float = 20.0, sample_ms: float = 1.0, samples: int = 15,
                 lead: bool = True):
        self.warmup_ms, self.sample_ms, self.samples, self.lead = warmup_ms, sample_ms, samples, lead

    def _batch_ms(self, run: RunFn, n_sets: int, calls: int, start_index: int = 0,
                  lead_us: float = 0.0) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        device_spin(lead_us)
        start.record()
        for i in range(calls):
            run((start_index + i) % n_sets)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def _batch_us(self, run: RunFn, n_sets: int, batch: Batch, start_index: int) -> float:
        return self._batch_ms(run, n_sets, batch.calls, start_index, batch.lead_us) * 1000.0 / batch.calls

    def _warm(self, run: RunFn, n_sets: int) -> Batch:
        """Warm ``run`` up; return how many calls make one timed batch, and its lead."""
        run(0)
        torch.cuda.synchronize()
        lead = 0.0
        if self.lead:
            t0 = time.perf_counter()
            run(0)  # host time to submit one call (the device may still be running it)
            lead = min(self.max_lead_us, 2e6 * (time.perf_counter() - t0) + 10.0)
            torch.cuda.synchronize()
        probe = max(self._batch_ms(run, n_sets, 3, 0, lead) / 3, 1e-4)
        self._batch_ms(run, n_sets, max(3, math.ceil(self.warmup_ms / probe)), 0, lead)
        return Batch(max(1, min(10000, math.ceil(self.sample_ms / probe))), lead)


class HostTimer(_BatchTimer):
    """Wall-clock timer for CPU backends (perf_counter around batches)."""

    def __init__(self, warmup_calls: int = 1, samples: int = 5, sample_s: float = 0.05):
        self.warmup_calls, self.samples, self.sample_s = warmup_calls, samples, sample_s

    def _warm(self, run: RunFn, n_sets: int) -> Batch:
        for i in range(self.warmup_calls):
            run(i % n_sets)
        t0 = time.perf_counter()
        run(0)
        probe = max(time.perf_counter() - t0, 1e-7)
        return Batch(max(1, min(1000, math.ceil(self.sample_s / probe))))

    def _batch_us(self, run: RunFn, n_sets: int, batch: Batch, start_index: int) -> float:
        t0 = time.perf_counter()
        for i in range(batch.calls):
            run((start_index + i) % n_sets)
        return (time.perf_counter() - t0) * 1e6 / batch.calls


def default_timer(device_is_cuda: bool) -> Timer:
    return CudaEventTimer() if device_is_cuda else HostTimer()


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def rotation_sets(bytes_per_set: int, device_is_cuda: bool, max_sets: int = 32,
                  budget_bytes: int = 2 << 30) -> int:
    """How many input sets to rotate through so they do not all fit in L2 at once.

    Aim for at least 3x the L2 size in total, capped by ``max_sets`` and a memory budget.
    """
    if not device_is_cuda:
        return 1
    l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 50 << 20)
    want = math.ceil(3 * l2 / max(bytes_per_set, 1))
    by_budget = max(1, budget_bytes // max(bytes_per_set, 1))
    return int(max(1, min(max_sets, want, by_budget)))


def graph_replay_us(run: RunFn, n_sets: int, timer: Timer | None = None, reps: int | None = None) -> float:
    """GPU time per call of ``run``: ``reps`` calls (default: one per input set) captured in
    one CUDA graph, the graph's replays timed with ``timer``. Host launch cost is excluded,
    so this is what a graph-captured model pays. Warm-up runs on a side stream first, as
    capture requires (lazy initialisation, workspaces). CUDA only.

    Args:
        run: takes an input-set index in ``range(n_sets)``; must be capturable.
        n_sets: number of input sets the calls rotate through.
        timer: default ``CudaEventTimer()``.
        reps: calls inside the graph (default ``n_sets``).
    """
    reps = n_sets if reps is None else reps
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(n_sets):
            run(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        results = [run(r % n_sets) for r in range(reps)]
    us = median((timer or CudaEventTimer()).measure(lambda i: graph.replay(), 1)) / reps
    del graph, results
    return us


def copy_bandwidth_gbps(nbytes: int = 1 << 30, timer: Timer | None = None) -> float:
    """Device-to-device copy rate of ``nbytes`` in GB/s, counting bytes read + written (the
    yardstick for bandwidth-bound kernels); 0.0 without CUDA."""
    if not torch.cuda.is_available():
        return 0.0
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = median((timer or CudaEventTimer()).measure(lambda i: dst.copy_(src), 1))
    del src, dst
    return 2 * nbytes / us / 1e3


def graph_replay_interleaved_us(runs: list[tuple[RunFn, int]], timer: Timer | None = None) -> list[float]:
    """``graph_replay_us`` for several runs at once, their graph replays timed in alternating
    batches (``Timer.measure_interleaved``), so that clock and thermal drift during the
    measurement hit all of them alike: for deciding which of close candidates is faster.
    Each ``(run, n_sets)`` is captured as n_sets calls in one graph. CUDA only.

    Returns the GPU time per call of each run, in order."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for run, n_sets in runs:
            for i in range(n_sets):
                run(i)
    torch.cuda.current_stream().wait_stream(side)
    graphs, keep = [], []
    for run, n_sets in runs:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            keep.append([run(i) for i in range(n_sets)])
        graphs.append(g)
    samples = (timer or CudaEventTimer()).measure_interleaved([((lambda i, g=g: g.replay()), 1) for g in graphs])
    us = [median(s) / n for s, (_, n) in zip(samples, runs)]
    del graphs, keep
    return us
