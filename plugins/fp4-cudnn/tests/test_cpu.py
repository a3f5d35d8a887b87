"""CPU tests: the plugin installs, registers, answers ``supports`` truthfully, and its pure
logic (support rules, graph keys, tactic matching) behaves. No GPU, libcudnn or Triton needed."""

from importlib import metadata

import pytest
import torch

import fp4core
from fp4core.dispatch.selector import selector
from fp4core.dispatch.problem import DeviceInfo

from fp4_cudnn import env
from fp4_cudnn.support import PATH_DEQUANT, PATH_NATIVE, path_for, problem_reason


def _problem(sm=90, m=128, n=4096, k=4096, nv=True, out=torch.bfloat16, sf8x4=False):
    dev = DeviceInfo("cuda", 0, f"hypothetical sm_{sm}", (sm // 10, sm % 10))
    return fp4core.make_problem(m, n, k, use_nvfp4=nv, out_dtype=out, use_8x4_sf_layout=sf8x4, device=dev)


def test_entry_point_is_declared():
    eps = [ep for ep in metadata.entry_points(group="fp4core.backends") if ep.name == "cudnn"]
    assert len(eps) == 1 and eps[0].value == "fp4_cudnn.plugin:CudnnBackend"
    assert eps[0].dist.name == "fp4-cudnn"


def test_registers_and_is_listed():
    rows = {b.name: b for b in fp4core.backends()}
    assert "cudnn" in rows, rows
    row = rows["cudnn"]
    assert row.status == "loaded", row.error
    assert row.package == "fp4-cudnn"
    assert "sm100" in row.unverified_targets  # Blackwell code exists but is not measured here


def test_supports_says_needs_cuda_on_cpu():
    be = selector.registry.get("cudnn")
    answer = be.supports(fp4core.make_problem(128, 4096, 4096, device="cpu"))
    assert not answer.ok
    assert "needs a CUDA device" in answer.reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA answer")
def test_supports_hypothetical_gpu_without_cuda_is_refused_cleanly():
    be = selector.registry.get("cudnn")
    answer = be.supports(_problem(sm=90))
    assert not answer.ok and "needs a CUDA device" in answer.reason
    assert not fp4core.is_backend_supported("cudnn", 100)


def test_auto_on_cpu_excludes_cudnn_with_reason():
    exp = fp4core.explain(fp4core.make_problem(16, 256, 256, device="cpu"))
    assert exp.choice.backend.name == "torch"
    assert "needs a CUDA device" in exp.excluded["cudnn"]


def test_path_by_capability():
    assert path_for(75) is None
    assert path_for(80) == path_for(86) == path_for(89) == path_for(90) == PATH_DEQUANT
    assert path_for(100) == path_for(103) == path_for(120) == PATH_NATIVE


@pytest.mark.parametrize("sm", [80, 90])
def test_dequant_path_rules(sm):
    assert problem_reason(_problem(sm=sm), 91900) == ""
    assert problem_reason(_problem(sm=sm, nv=False, out=torch.float16), 91900) == ""
    assert problem_reason(_problem(sm=sm, sf8x4=True), 91900) == ""  # the kernel reads 8x4 too
    assert "too old" in problem_reason(_problem(sm=sm), 80906)
    assert "multiple of 8" in problem_reason(_problem(sm=sm, n=4100), 91900)


def test_native_path_rules():
    assert problem_reason(_problem(sm=100), 91900) == ""
    assert problem_reason(_problem(sm=100, nv=False), 91900) == ""
    assert "F8_128x4" in problem_reason(_problem(sm=100, sf8x4=True), 91900)
    assert "too old" in problem_reason(_problem(sm=100), 90600)
    assert "too old" in problem_reason(_problem(sm=120, nv=False), 91000)
    assert problem_reason(_problem(sm=120, nv=True), 91000) == ""
    assert "multiple of 32" in problem_reason(_problem(sm=100, k=4112), 91900)


def test_old_gpu_refused():
    assert "8.0 or newer" in problem_reason(_problem(sm=75), 91900)


def test_version_format():
    assert env.format_version(91900) == "9.19.0"
    assert env.format_version(90700) == "9.7.0"


def test_graph_key_shares_bf16_graph_across_formats():
    from fp4_cudnn.plugin import graph_key

    assert graph_key(_problem(sm=90, nv=True)) == graph_key(_problem(sm=90, nv=False))
    assert graph_key(_problem(sm=90, sf8x4=True)) == graph_key(_problem(sm=90))
    assert graph_key(_problem(sm=100, nv=True)) != graph_key(_problem(sm=100, nv=False))
    assert graph_key(_problem(sm=90, m=7)) != graph_key(_problem(sm=90, m=8))


def test_tactic_matching_by_engine_name_then_index():
    from fp4_cudnn.graphs import PlannedGraph

    pg = PlannedGraph.__new__(PlannedGraph)
    pg.count, pg._names, pg._failed, pg._built = 3, ["eng0", "eng7_k3", "eng9"], {}, {0: 0}
    pg._lock = None
    from fp4_cudnn.plugin import CudnnTactic

    assert pg.index_of(CudnnTactic(plan=0, engine="eng9")) == 2   # the name wins (another M's graph)
    assert pg.index_of(CudnnTactic(plan=1, engine="gone")) == 1   # else the index
    assert pg.index_of(CudnnTactic(plan=5, engine="gone")) == 0   # else the default (first built)


def test_tactic_type_labels_and_old_cache_json():
    from fp4_cudnn.plugin import CudnnBackend, CudnnTactic

    assert CudnnBackend().backend_info().tactic_type is CudnnTactic
    old = {"graph": "plain", "plan": 3, "engine": "eng0"}  # a tuning cache of earlier versions
    t = CudnnTactic.from_json(old)
    assert t == CudnnTactic(graph="plain", plan=3, engine="eng0")
    assert t.label() == "engine=eng0,graph=plain,plan=3"
    assert CudnnTactic.from_json(t.to_json()) == t
    assert CudnnTactic.from_json({}) == CudnnTactic() and CudnnTactic().label() == "default"
    assert CudnnBackend().tactics(_problem(m=None)) == [CudnnTactic()]


def test_import_needs_no_triton_or_gpu():
    import importlib
    import sys

    for name in ("fp4_cudnn", "fp4_cudnn.plugin", "fp4_cudnn.dequant", "fp4_cudnn.graphs"):
        importlib.import_module(name)
    assert "fp4_cudnn._triton_kernels" not in sys.modules or env.triton_problem() == ""


def test_graph_variants(monkeypatch):
    from fp4_cudnn.plugin import EPILOGUE, NATIVE, PLAIN, variants

    monkeypatch.delenv("FP4_CUDNN_EXACT_ALPHA", raising=False)
    assert variants(_problem(sm=90)) == [PLAIN, EPILOGUE]
    no_alpha = fp4core.make_problem(128, 4096, 4096, use_nvfp4=False, has_alpha=False,
                                    device=DeviceInfo("cuda", 0, "hypothetical sm_90", (9, 0)))
    assert variants(no_alpha) == [PLAIN]
    assert variants(_problem(sm=100)) == [NATIVE]
    monkeypatch.setenv("FP4_CUDNN_EXACT_ALPHA", "1")
    assert variants(_problem(sm=90)) == [EPILOGUE]
    assert variants(no_alpha) == [PLAIN]


def test_weight_only_rules_and_variants(monkeypatch):
    """Weight-only (W4A16) problems: bf16 activations on the SM80-SM90 path, alpha in the fp32
    epilogue; the backend lists bf16 activations."""
    import dataclasses

    from fp4_cudnn.plugin import EPILOGUE, PLAIN, CudnnBackend, variants

    monkeypatch.delenv("FP4_CUDNN_EXACT_ALPHA", raising=False)
    w4a16 = dataclasses.replace(_problem(sm=90), act_dtype=torch.bfloat16)
    assert problem_reason(w4a16, 91900) == ""
    assert variants(w4a16) == [EPILOGUE]
    assert variants(dataclasses.replace(w4a16, has_alpha=False)) == [PLAIN]
    assert "bfloat16 activations" in problem_reason(dataclasses.replace(w4a16, act_dtype=torch.float16), 91900)
    assert "SM80-SM90 only" in problem_reason(dataclasses.replace(_problem(sm=100), act_dtype=torch.bfloat16),
                                              91900)
    assert CudnnBackend().backend_info().activations == ("fp4", "bf16")
