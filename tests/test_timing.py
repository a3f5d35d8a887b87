"""Timers: interleaved measurement alternates batches and times each function on its own."""

import time

import pytest

from fp4core.dispatch.timing import HostTimer


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


def test_copy_bandwidth_is_zero_without_cuda():
    import torch
    from fp4core.dispatch.timing import copy_bandwidth_gbps
    if not torch.cuda.is_available():
        assert copy_bandwidth_gbps(1 << 20) == 0.0


@pytest.mark.gpu
def test_graph_replay_times_each_captured_call():
    import torch
    from fp4core.dispatch.timing import copy_bandwidth_gbps, graph_replay_us
    xs = [torch.randn(1 << 22, device="cuda") for _ in range(2)]
    ys = [torch.empty_like(x) for x in xs]
    seen = []

    def run(i):
        seen.append(i)
        ys[i].copy_(xs[i])

    one = graph_replay_us(run, 2, reps=2)
    four = graph_replay_us(run, 2, reps=8)
    # warm-up visits every set, then capture rotates through them
    assert seen[:4] == [0, 1, 0, 1]
    assert one > 0 and four > 0 and abs(four - one) / one < 0.5  # per call, not per replay
    assert torch.equal(ys[1], xs[1])
    assert copy_bandwidth_gbps(1 << 26) > 100


@pytest.mark.gpu
def test_batches_start_behind_a_lead_so_host_submit_time_is_not_counted():
    """A call that needs 300 us of host time before launching 600 us of device work: timed
    back to back in batches of one or two, the start event would fire before the first launch
    and count most of that host time; behind the lead spin the device time alone remains."""
    import torch
    from fp4core.dispatch.timing import CudaEventTimer, device_spin, median

    def run(i):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 300e-6:
            pass
        device_spin(600.0)

    with_lead = median(CudaEventTimer(samples=7).measure(run, 1))
    without = median(CudaEventTimer(samples=7, lead=False).measure(run, 1))
    torch.cuda.synchronize()
    assert abs(with_lead - 600.0) < 60.0, with_lead
    assert without > with_lead + 80.0, (without, with_lead)
