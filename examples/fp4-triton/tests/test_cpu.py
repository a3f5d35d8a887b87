"""CPU tests (CI): registration through the entry point, supports() reasons, tactics."""

import json

import pytest

import fp4core
from fp4core import DeviceInfo
from fp4_triton import plugin, tactics

H100 = DeviceInfo("cuda", 0, "NVIDIA H100 80GB HBM3", (9, 0), 132)
A100 = DeviceInfo("cuda", 0, "NVIDIA A100", (8, 0), 108)


def problem(m=16, n=4096, k=4096, device=H100, **kw):
    return fp4core.make_problem(m, n, k, device=device, **kw)


def test_registered_through_the_entry_point():
    status = {s.name: s for s in fp4core.backends()}
    assert "triton" in status, f"backends: {sorted(status)}"
    st = status["triton"]
    assert st.status == "loaded", st.error
    assert st.package == "fp4-triton" and st.version == "0.1.1"
    assert "sm90a" not in st.unverified_targets and "sm100a" in st.unverified_targets


def test_cpu_problem_is_refused_with_the_reason():
    p = fp4core.make_problem(4, 256, 256, device="cpu")
    ans = plugin.TritonBackend().supports(p)
    assert not ans and "needs a CUDA device" in ans.reason and "cpu" in ans.reason
    assert "triton" not in fp4core.supported_backends(p)


def test_old_gpu_is_refused_with_the_reason():
    ans = plugin.TritonBackend().supports(problem(device=A100))
    assert not ans and "SM89" in ans.reason and "sm_80" in ans.reason


def test_missing_or_old_triton_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(plugin, "triton_version", lambda: None)
    ans = plugin.TritonBackend().supports(problem())
    assert not ans and "Triton is not installed" in ans.reason
    monkeypatch.setattr(plugin, "triton_version", lambda: (3, 1))
    ans = plugin.TritonBackend().supports(problem())
    assert not ans and ">= 3.2" in ans.reason and "3.1" in ans.reason
    monkeypatch.setattr(plugin, "triton_version", lambda: (3, 6))
    assert plugin.TritonBackend().supports(problem())


def test_huge_weight_is_refused(monkeypatch):
    monkeypatch.setattr(plugin, "triton_version", lambda: (3, 6))
    ans = plugin.TritonBackend().supports(problem(n=2**20, k=2**20))
    assert not ans and "2^31" in ans.reason


@pytest.mark.parametrize("m", [1, 16, 17, 64, 100, 256, 257, 8192])
@pytest.mark.parametrize("nvfp4", [True, False])
def test_tactics_are_json_valid_and_cover_k(m, nvfp4):
    p = problem(m=m, n=8192, k=8192, use_nvfp4=nvfp4)
    ts = plugin.TritonBackend().tactics(p)
    assert ts and len(ts) == len(set(ts)) and all(type(t) is tactics.TritonTactic for t in ts)
    for t in ts:
        assert tactics.TritonTactic.from_json(json.loads(json.dumps(t.to_json()))) == t
        steps = -(-p.k // t.bk)
        assert steps % t.split_k == 0, t
        if m > 256:
            assert t.split_k == 1


def test_auto_split_fills_the_sms():
    # M=1, N=8192, bn=64: 128 tiles; two CTAs per SM on 132 SMs wants 2 splits.
    assert tactics.auto_split(problem(m=1, n=8192, k=8192), 16, 64, 256) == 2
    # Tiny N: as many splits as keep 4 K steps each.
    assert tactics.auto_split(problem(m=1, n=64, k=8192), 16, 64, 256) == 8
    assert tactics.auto_split(problem(m=4096, n=8192, k=8192), 128, 128, 128) == 1


@pytest.mark.parametrize("bad, key", [({"bm": 48}, "bm"), ({"bk": 16}, "bk"), ({"tile": 1}, "unknown"),
                                      ({"warps": 3}, "warps"), ({"swap": "1"}, "swap")])
def test_bad_tactics_name_the_key(bad, key):
    with pytest.raises(ValueError, match=key):
        tactics.TritonTactic.from_json(bad)


def test_tactic_defaults_and_labels():
    # the defaults of earlier versions' DEFAULT dict; a dict tactic of theirs reads back as before
    assert tactics.TritonTactic().to_json() == {"bm": 128, "bn": 128, "bk": 128, "warps": 8, "stages": 3,
                                                "split_k": 1, "group_m": 8, "swap": 0, "a16": 0, "asm": 1}
    t = tactics.TritonTactic.from_json({"bm": 16, "bn": 64, "bk": 256, "warps": 4, "stages": 4, "split_k": 2,
                                        "group_m": 8, "swap": 1, "a16": 0, "asm": 1})
    assert t.label() == "a16=0,asm=1,bk=256,bm=16,bn=64,group_m=8,split_k=2,stages=4,swap=1,warps=4"
    assert plugin.TritonBackend().backend_info().tactic_type is tactics.TritonTactic
