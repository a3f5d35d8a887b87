"""fp4core.kit: the buffers, device facts and toolchain checks every GPU plugin uses
(issue 17 item 1), and that no plugin keeps its own copy of them."""

import re
from pathlib import Path

import pytest
import torch

from fp4core import kit
from fp4core.kit import CaptureGrowthError, DeviceBuffers

ROOT = Path(__file__).resolve().parents[1]


def test_buffers_grow_keep_what_they_replaced_and_start_aligned():
    bufs = DeviceBuffers(torch.device("cpu"))
    a = bufs.get("p.x", 100, torch.float32, minimum=64)
    assert a.numel() == 100 and a.dtype == torch.float32
    assert bufs.get("p.x", 80, torch.float32) is a, "a large enough buffer must be reused"
    b = bufs.get("p.x", 1000, torch.float32)
    assert b.numel() == 1000 and b is not a
    assert any(t is a for t in bufs._retired["p.x"]), "the outgrown buffer must stay allocated"
    assert bufs.get("p.small", 3, torch.int32, minimum=1 << 10).numel() == 1 << 10
    assert bufs.get("p.pow2", 1000, torch.uint8, round_pow2=True).numel() == 1024
    z = bufs.get("p.z", 50, torch.int32, zeroed=True)
    assert torch.count_nonzero(z) == 0
    with pytest.raises(TypeError, match="holds torch.float32, asked for torch.float16"):
        bufs.get("p.x", 5000, torch.float16)
    with pytest.raises(TypeError, match="holds torch.float32, asked for torch.float16"):
        bufs.get("p.x", 10, torch.float16)  # large enough, but not that dtype


def test_growth_during_capture_is_refused_only_when_asked(monkeypatch):
    bufs = DeviceBuffers(torch.device("cpu"))
    small = bufs.get("q.a", 10, torch.float32)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert bufs.get("q.a", 10, torch.float32, grow_in_capture=False) is small  # no growth: fine
    with pytest.raises(CaptureGrowthError, match="'q.a'.*must grow to 20 elements inside CUDA-graph capture"):
        bufs.get("q.a", 20, torch.float32, grow_in_capture=False)
    assert bufs.get("q.a", 20, torch.float32).numel() == 20  # allowed by default


def test_release_by_prefix_leaves_other_plugins_buffers():
    bufs = DeviceBuffers(torch.device("cpu"))
    mine = bufs.get("mine.a", 8, torch.float32)
    bufs.get("mine.a", 16, torch.float32)
    theirs = bufs.get("theirs.a", 8, torch.float32)
    bufs.release("mine.")
    assert "mine.a" not in bufs._buffers and "mine.a" not in bufs._retired
    assert bufs.get("theirs.a", 8, torch.float32) is theirs
    assert bufs.get("mine.a", 8, torch.float32) is not mine


def test_device_facts_and_targets():
    assert kit.arch_for((9, 0)) == "sm_90a"
    assert kit.arch_for((10, 0)) == "sm_100a"
    assert kit.arch_for((12, 0)) == "sm_120a"
    assert kit.arch_for((8, 9)) == "sm_89"
    assert kit.sm_count(None) == kit.DEFAULT_SM_COUNT
    assert kit.smem_per_sm(None) == kit.DEFAULT_SMEM_PER_SM
    from fp4core.kit import jit
    assert kit.nvcc_missing() == ("" if jit.nvcc_path() else kit.NVCC_MISSING)


_OWN_HELPERS = {
    "an SM-count lookup": re.compile(r"multi_processor_count"),
    "a raw-stream helper": re.compile(r"_cuda_getCurrentRawStream|current_stream\([^)]*\)\.cuda_stream"),
    "its own grow-only workspace": re.compile(r"_retired|class Workspace\b"),
    "its own nvcc-missing message": re.compile(r"nvcc \(CUDA compiler\) not found"),
}


def test_no_plugin_keeps_its_own_copy_of_the_kit():
    # the plugins' packages (their probe scripts and benchmarks may do as they like)
    sources = [*ROOT.glob("plugins/*/fp4_*/*.py"), *ROOT.glob("examples/fp4-triton/fp4_*/*.py")]
    assert {p.parent.name for p in sources} >= {"fp4_cudnn", "fp4_cutlass", "fp4_trtllm", "fp4_triton"}
    found = [f"{p.relative_to(ROOT)}: {what}" for p in sources for what, pat in _OWN_HELPERS.items()
             if pat.search(p.read_text())]
    assert not found, "use fp4core.kit instead:\n" + "\n".join(found)
