"""Timing of a GPU (or CPU) call, shared by the tuner and the benchmark.

A measured function takes an input-set index; timers rotate through ``n_sets`` sets so
repeated calls do not find their operands in L2. CUDA timings use events around batches
of calls after warm-up and return per-call samples in microseconds (take the median).
"""

from __future__ import annotations

import math
import statistics
import time
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


class _BatchTimer:
    """The measuring loop both timers share: warm each run up, then take ``samples`` batches
    of each in turn. Subclasses say how to warm up (and how many calls make a batch) and how
    to time one batch."""

    samples: int

    def _warm(self, run: RunFn, n_sets: int) -> int:
        raise NotImplementedError

    def _batch_us(self, run: RunFn, n_sets: int, calls: int, start_index: int) -> float:
        """Microseconds per call over ``calls`` calls from input set ``start_index`` on."""
        raise NotImplementedError

    def measure(self, run: RunFn, n_sets: int) -> list[float]:
        return self.measure_interleaved([(run, n_sets)])[0]

    def measure_interleaved(self, runs: list[tuple[RunFn, int]]) -> list[list[float]]:
        calls = [self._warm(run, n) for run, n in runs]
        out: list[list[float]] = [[] for _ in runs]
        for s in range(self.samples):
            for j, (run, n) in enumerate(runs):
                out[j].append(self._batch_us(run, n, calls[j], s * calls[j]))
        return out


class CudaEventTimer(_BatchTimer):
    """CUDA events around batches of calls on the current stream.

    Args:
        warmup_ms: time spent calling before measuring (clocks, caches, lazy init).
        sample_ms: target length of one timed batch (short kernels get many calls).
        samples: number of batches.
    """

    def __init__(self, warmup_ms: float = 20.0, sample_ms: float = 1.0, samples: int = 15):
        self.warmup_ms, self.sample_ms, self.samples = warmup_ms, sample_ms, samples

    def _batch_ms(self, run: RunFn, n_sets: int, calls: int, start_index: int = 0) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(calls):
            run((start_index + i) % n_sets)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def _batch_us(self, run: RunFn, n_sets: int, calls: int, start_index: int) -> float:
        return self._batch_ms(run, n_sets, calls, start_index) * 1000.0 / calls

    def _warm(self, run: RunFn, n_sets: int) -> int:
        """Warm ``run`` up; return how many calls make one timed batch."""
        run(0)
        torch.cuda.synchronize()
        probe = max(self._batch_ms(run, n_sets, 3) / 3, 1e-4)
        self._batch_ms(run, n_sets, max(3, math.ceil(self.warmup_ms / probe)))
        return max(1, min(10000, math.ceil(self.sample_ms / probe)))


class HostTimer(_BatchTimer):
    """Wall-clock timer for CPU backends (perf_counter around batches)."""

    def __init__(self, warmup_calls: int = 1, samples: int = 5, sample_s: float = 0.05):
        self.warmup_calls, self.samples, self.sample_s = warmup_calls, samples, sample_s

    def _warm(self, run: RunFn, n_sets: int) -> int:
        for i in range(self.warmup_calls):
            run(i % n_sets)
        t0 = time.perf_counter()
        run(0)
        probe = max(time.perf_counter() - t0, 1e-7)
        return max(1, min(1000, math.ceil(self.sample_s / probe)))

    def _batch_us(self, run: RunFn, n_sets: int, calls: int, start_index: int) -> float:
        t0 = time.perf_counter()
        for i in range(calls):
            run((start_index + i) % n_sets)
        return (time.perf_counter() - t0) * 1e6 / calls


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
