"""fp4core.kit.pdl (the switch) and fp4core/pdl.cuh (the kernels' side), without a GPU: the
process default (off until the kernels have run on a GPU) and its environment variable, the per-thread override, SM90+ only,
mm_bf16_fp4(enable_pdl=False), and that the header compiles to griddepcontrol on sm_90a and
to nothing below it."""

import threading

import pytest
import torch

import fp4core
from fp4core import api
from fp4core.kit import jit, pdl
from fp4core.testing import quantize_weight

needs_nvcc = pytest.mark.skipif(jit.nvcc_path() is None, reason="nvcc not installed")


@pytest.fixture
def fresh_default(monkeypatch):
    pdl.process_default.cache_clear()
    yield monkeypatch
    pdl.process_default.cache_clear()


@pytest.mark.parametrize("value,want", [(None, False), ("", False), ("1", True), ("on", True),
                                        ("0", False), ("off", False), ("False", False)])
def test_process_default_follows_the_environment(fresh_default, value, want):
    if value is None:
        fresh_default.delenv(pdl.ENV, raising=False)
    else:
        fresh_default.setenv(pdl.ENV, value)
    assert pdl.process_default() is want


def test_a_bad_environment_value_is_refused_by_name(fresh_default):
    fresh_default.setenv(pdl.ENV, "sometimes")
    with pytest.raises(ValueError, match="FP4CORE_PDL"):
        pdl.process_default()


def test_only_sm90_and_newer_launch_with_pdl(fresh_default, monkeypatch):
    fresh_default.setenv(pdl.ENV, "1")
    caps = {0: (9, 0), 1: (8, 9), 2: (10, 0)}
    monkeypatch.setattr(pdl, "_capable", lambda i: caps[i] >= (9, 0))
    assert [pdl.enabled(i) for i in range(3)] == [True, False, True]
    with pdl.override(True):
        assert not pdl.enabled(1)  # forcing it on cannot make an SM89 device do it
    with pdl.override(False):
        assert not pdl.enabled(0)


def test_override_nests_restores_and_stays_in_its_thread(fresh_default, monkeypatch):
    fresh_default.setenv(pdl.ENV, "0")
    monkeypatch.setattr(pdl, "_capable", lambda i: True)
    seen = []
    with pdl.override(True):
        assert pdl.enabled(0)
        with pdl.override(False):
            assert not pdl.enabled(0)
            t = threading.Thread(target=lambda: seen.append(pdl.enabled(0)))
            t.start()
            t.join()
        assert pdl.enabled(0)
    assert not pdl.enabled(0)
    assert seen == [False]  # the other thread sees the process default (off here), not the override
    with pytest.raises(RuntimeError), pdl.override(True):
        raise RuntimeError("boom")
    assert not pdl.enabled(0)  # restored after an exception too


def test_override_wants_a_bool():
    with pytest.raises(TypeError, match="on: expected a bool"):
        with pdl.override(1):
            pass


def test_mm_bf16_fp4_enable_pdl_false_turns_it_off_for_that_call(fresh_default, monkeypatch):
    fresh_default.setenv(pdl.ENV, "1")
    monkeypatch.setattr(pdl, "_capable", lambda i: True)
    seen = []
    real = api._run

    def spy(*args, **kwargs):
        seen.append(pdl.enabled(0))
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "_run", spy)
    w = torch.randn(64, 128)
    b, bsf, alpha = quantize_weight(w)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    on = fp4core.mm_bf16_fp4(x, b, bsf, alpha, backend="torch")
    off = fp4core.mm_bf16_fp4(x, b, bsf, alpha, backend="torch", enable_pdl=False)
    assert seen == [True, False]
    assert torch.equal(on, off)
    assert pdl.enabled(0)  # nothing leaks past the call


KERNEL = r"""
#include "fp4core/pdl.cuh"
__global__ void twice(const float* x, float* y, int n) {
    fp4core::pdl_wait();
    fp4core::pdl_launch_dependents();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 2.f * x[i];
}
extern "C" int launch_twice(const float* x, float* y, int n, void* s, int pdl) {
    return (int)fp4core::launch_pdl(twice, dim3((n + 255) / 256), dim3(256), 0, (cudaStream_t)s, pdl != 0, 1u, x, y, n);
}
"""


@needs_nvcc
def test_the_kit_header_is_on_every_build_path(tmp_path, monkeypatch):
    monkeypatch.setenv(jit.ENV_CACHE, str(tmp_path / "cache"))
    src = tmp_path / "k.cu"
    src.write_text(KERNEL)
    ptx90 = jit.build("pdltest", [src], arch="sm_90a", kind="ptx", progress=False).read_text()
    assert "griddepcontrol.wait" in ptx90 and "griddepcontrol.launch_dependents" in ptx90
    ptx80 = jit.build("pdltest", [src], arch="sm_80", kind="ptx", progress=False).read_text()
    assert "griddepcontrol" not in ptx80  # a no-op below SM90
    assert jit.build("pdltest", [src], arch="sm_90a", kind="object", progress=False).stat().st_size > 0


def test_the_kit_headers_are_part_of_the_build_key(tmp_path, monkeypatch):
    inc = tmp_path / "include"
    (inc / "fp4core").mkdir(parents=True)
    hdr = inc / "fp4core" / "pdl.cuh"
    hdr.write_text("// one\n")
    monkeypatch.setattr(jit, "KIT_INCLUDE", inc)
    src = tmp_path / "k.cu"
    src.write_text("int x;\n")
    key = jit.build_key("t", [src], "sm_90a", [], [], "shared", "13.0")
    hdr.write_text("// two\n")  # same size, other content
    assert jit.build_key("t", [src], "sm_90a", [], [], "shared", "13.0") != key
