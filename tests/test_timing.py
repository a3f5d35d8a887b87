"""Timers: interleaved measurement alternates batches and times each function on its own."""

import time

from fp4core.timing import HostTimer


def test_interleaved_batches_alternate_and_time_each_function():
    calls = []

    def fast(i):
        calls.append("fast")

    def slow(i):
        calls.append("slow")
        time.sleep(0.002)

    timer = HostTimer(warmup_calls=1, samples=4, sample_s=0.001)
    fast_s, slow_s = timer.measure_interleaved([(fast, 3), (slow, 2)])
    assert len(fast_s) == len(slow_s) == 4
    assert min(slow_s) > 1900 and max(fast_s) < 500  # microseconds per call
    # After warm-up, whole batches alternate: fast..., slow, fast..., slow, ...
    timed = calls[calls.index("slow", calls.index("slow") + 1) + 1:]
    runs = [name for j, name in enumerate(timed) if j == 0 or timed[j - 1] != name]
    assert runs == ["fast", "slow"] * 4
