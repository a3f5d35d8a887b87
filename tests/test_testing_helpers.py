"""fp4core.testing.device_allocations against a simulated caching allocator (CPU): it counts
allocation requests and peak growth, and a free inside the block (which moves
memory_allocated() without any allocation) does not count."""

import pytest
import torch

from fp4core.testing import device_allocations


class FakeAllocator:
    """The few torch.cuda statistics device_allocations reads, kept like the real allocator."""

    def __init__(self, monkeypatch, live=1 << 20, with_requested=True):
        self.live, self.peak, self.count, self.requested = live, live, 7, 123
        self.with_requested = with_requested
        self.syncs = 0
        for name in ("memory_stats", "synchronize", "reset_peak_memory_stats",
                     "memory_allocated", "max_memory_allocated"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))

    def alloc(self, nbytes):
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        self.count += 1
        self.requested += nbytes

    def free(self, nbytes):
        self.live -= nbytes

    def memory_stats(self, device=None):
        stats = {"allocation.all.allocated": self.count, "allocated_bytes.all.current": self.live}
        if self.with_requested:
            stats["requested_bytes.all.allocated"] = self.requested
        return stats

    def synchronize(self, device=None):
        self.syncs += 1

    def reset_peak_memory_stats(self, device=None):
        self.peak = self.live

    def memory_allocated(self, device=None):
        return self.live

    def max_memory_allocated(self, device=None):
        return self.peak


def test_counts_allocations_bytes_and_peak_growth(monkeypatch):
    fake = FakeAllocator(monkeypatch)
    fake.alloc(4096)  # before the block: not counted
    with device_allocations() as counts:
        fake.alloc(512)
        fake.free(512)
        fake.alloc(1024)
        fake.free(1024)
    assert (counts.allocations, counts.requested_bytes, counts.peak_growth) == (2, 1536, 1024)
    assert fake.syncs == 2  # pending kernels finish before each reading


def test_a_free_inside_the_block_is_not_an_allocation(monkeypatch):
    fake = FakeAllocator(monkeypatch)
    with device_allocations() as counts:
        fake.free(4 << 20)  # e.g. the GC collecting an earlier tensor
    assert (counts.allocations, counts.requested_bytes, counts.peak_growth) == (0, 0, 0)


def test_old_torch_without_requested_bytes_is_an_error_not_a_zero(monkeypatch):
    FakeAllocator(monkeypatch, with_requested=False)
    with pytest.raises(RuntimeError, match="requested_bytes.all.allocated"):
        with device_allocations():
            pass


def test_global_access_before_pdl_wait_reads_each_kernel_of_a_ptx_text():
    from fp4core.testing import global_access_before_pdl_wait
    ptx = "\n".join([
        ".visible .entry early(",
        "\tld.param.u64 %rd1, [early_param_0];",
        "\tprefetch.global.L2 [%rd1];",
        "\t@%p1 ld.global.nc.f32 %f1, [%rd1];",
        "\tcp.async.bulk.tensor.2d.shared::cluster.global [%r1], [%rd2, {%r2, %r3}], [%r4];",
        "\tgriddepcontrol.wait;",
        "\tst.global.f32 [%rd1], %f1;",
        "}",
        ".entry late(",
        "\tgriddepcontrol.wait;",
        "\tcp.async.cg.shared.global [%r1], [%rd1], 16;",
        "}",
        ".entry nowait(",
        "\tld.global.f32 %f1, [%rd1];",
        "}",
    ])
    got = global_access_before_pdl_wait(ptx)
    assert got == {"early": ["@%p1 ld.global.nc.f32 %f1, [%rd1];",
                             "cp.async.bulk.tensor.2d.shared::cluster.global [%r1], [%rd2, {%r2, %r3}], [%r4];"],
                   "late": [], "nowait": None}
    assert global_access_before_pdl_wait(ptx, plain_only=True)["early"] == ["@%p1 ld.global.nc.f32 %f1, [%rd1];"]
