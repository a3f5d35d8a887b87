"""CPU checks: the plugin installs and registers, answers supports/tactics, and its CUDA
source compiles for sm_90a and sm_100a (compile-only, needs nvcc)."""

import json
from importlib import metadata

import pytest

import fp4core
from fp4core import jit
from fp4core.problem import DeviceInfo

from fp4_trtllm import launcher
from fp4_trtllm.plugin import TrtllmBackend

needs_nvcc = pytest.mark.skipif(jit.nvcc_path() is None, reason="nvcc not installed")
H100 = DeviceInfo("cuda", 0, "hypothetical H100", (9, 0))


def test_entry_point_registered():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="fp4core.backends")}
    assert eps.get("trtllm") == "fp4_trtllm.plugin:TrtllmBackend"
    rows = {b.name: b for b in fp4core.backends()}
    assert rows["trtllm"].status == "loaded", rows["trtllm"]
    assert rows["trtllm"].package == "fp4-trtllm"


def test_supports_reasons_on_cpu():
    be = TrtllmBackend()
    why = be.supports(fp4core.make_problem(16, 256, 256, device="cpu"))
    assert not why and "needs a CUDA device" in why.reason
    assert not be.supports(fp4core.make_problem(16, 256, 96, device=H100))  # K % 64
    assert "M <= 256" in be.supports(fp4core.make_problem(300, 256, 256, device=H100)).reason
    old = DeviceInfo("cuda", 0, "old", (7, 5))
    assert "SM80" in be.supports(fp4core.make_problem(1, 256, 256, device=old)).reason


@needs_nvcc
def test_supports_yes_on_sm90():
    assert TrtllmBackend().supports(fp4core.make_problem(16, 8192, 8192, device=H100))


def test_info_and_auto_exclusion_without_prepare():
    info = TrtllmBackend().backend_info()
    assert info.name == "trtllm" and info.needs_prepare
    p = fp4core.make_problem(8, 256, 256, device=H100)
    assert info.priority_for(p) == 50
    exp = fp4core.explain(p)
    assert "fp4core.prepare" in exp.excluded["trtllm"]


@pytest.mark.parametrize("m", [1, 3, 16, 33, 64, 200])
def test_tactics_are_json_and_valid(m):
    p = fp4core.make_problem(m, 8192, 8192, device=H100)
    tacs = TrtllmBackend().tactics(p)
    assert tacs and json.loads(json.dumps(tacs)) == tacs
    for t in tacs:
        assert t["t"] in (1, 2, 4) and 1 <= t["warps"] <= 8 and t["split_k"] >= 1
        if launcher.nt_for(m) == 8:
            assert t["t"] <= 2


def test_arch_for():
    assert launcher.arch_for((9, 0)) == "sm_90a"
    assert launcher.arch_for((8, 0)) == "sm_80"
    assert launcher.arch_for((10, 0)) == "sm_100a"


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_90a", "sm_100a", "sm_80"])
def test_cuda_source_compiles(arch, tmp_path, monkeypatch):
    monkeypatch.setenv(jit.ENV_CACHE, str(tmp_path))
    obj = jit.build("fp4_trtllm_check", [launcher.SOURCE], arch=arch, kind="object", progress=False)
    assert obj.stat().st_size > 10000
