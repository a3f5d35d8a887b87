"""Issue 16: no silent wrong answer, no crash from a bad cache, a bad plugin or a bad switch.

The fault-injection plugins (tests/fixtures/fp4core-fault-plugins: a backend whose run
raises, one whose tactics raises, one that writes a wrong answer, one with a malformed
priority) are pip-installed into a private folder and discovered through their entry points,
as a user's broken plugin would be.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import fp4core
from fp4core.dispatch.selector import selector
from fp4core.dispatch.selector import selector
from fp4core.env import env_flag
from fp4core.dispatch.tuning_cache import FORMAT_NAME, FORMAT_VERSION, problem_key

FAULTS = Path(__file__).parent / "fixtures" / "fp4core-fault-plugins"


@pytest.fixture(scope="module")
def fault_plugins(tmp_path_factory):
    target = tmp_path_factory.mktemp("faults")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(FAULTS)], check=True)
    return target


@pytest.fixture
def enable(fault_plugins, monkeypatch):
    """enable(names): only torch and the named fault plugins are loaded."""
    monkeypatch.syspath_prepend(str(fault_plugins))  # found by entry point in this test only

    def _enable(*names):
        monkeypatch.setenv("FP4CORE_BACKENDS", ",".join(("torch",) + names))
        selector.registry.reset()
        selector._failed.clear()
    yield _enable
    selector._failed.clear()
    selector.registry.reset()


ALL_FAULTS = ("runfails", "tacticsfail", "wronganswer", "badpriority")


def small_call(m=5, n=24, k=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    gx, gw = fp4core.compute_global_scale(x), fp4core.compute_global_scale(w)
    a, asf = fp4core.nvfp4_quantize(x, gx)
    b, bsf = fp4core.nvfp4_quantize(w, gw)
    return a, b.T, asf, bsf.T, (1 / (gx * gw)).float()


# -- item 5: one malformed plugin must not break auto ------------------------------------------
def test_malformed_priority_is_refused_at_load_and_auto_works(enable):
    enable(*ALL_FAULTS)
    st = {s.name: s for s in fp4core.backends()}
    assert st["badpriority"].status == "broken"
    assert "priority" in st["badpriority"].error and "'high'" in st["badpriority"].error
    args = small_call()
    assert "failed to load" in fp4core.explain(*args).excluded["badpriority"]


def test_untuned_auto_falls_back_past_raising_run_and_tactics_and_names_them(enable, caplog):
    enable("runfails", "tacticsfail")
    args = small_call(seed=1)
    want = fp4core.mm_fp4(*args, backend="torch")
    assert fp4core.explain(*args).candidates[:2] == ["runfails", "tacticsfail"]  # tried first
    out = torch.full_like(want, float("nan"))
    with caplog.at_level("WARNING", logger="fp4core"):
        fp4core.mm_fp4(*args, out=out)
    assert torch.equal(out, want)
    assert "backend 'runfails'" in caplog.text and "too many resources" in caplog.text
    assert "backend 'tacticsfail'" in caplog.text and "KeyError" in caplog.text
    exp = fp4core.explain(*args)
    assert exp.choice.backend.name == "torch"
    assert "left out after a failed run" in exp.excluded["runfails"]
    assert [b for (_, b) in selector.failures()] == ["runfails"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="fp4core"):
        assert torch.equal(fp4core.mm_fp4(*args), want)
    assert "runfails" not in caplog.text  # left out: not tried (and logged) on every call


def test_raising_run_names_the_backend_when_asked_for_explicitly(enable):
    enable("runfails")
    with pytest.raises(fp4core.BackendFailedError, match=r"backend 'runfails'.*run.*too many resources"):
        fp4core.mm_fp4(*small_call(), backend="runfails")


def test_tuned_auto_drops_the_wrong_answer_and_the_raising_backends(enable):
    enable(*ALL_FAULTS)
    args = small_call(seed=2)
    want = fp4core.mm_fp4(*args, backend="torch")
    out = torch.full_like(want, float("nan"))
    with fp4core.autotune(verbose=False):
        fp4core.mm_fp4(*args, out=out)
    assert torch.equal(out, want)
    exp = fp4core.explain(*args)
    assert exp.choice.backend.name == "torch" and exp.choice.source == "cache"
    dropped = " ".join(f"{k} {v}" for k, v in exp.cache_entry.dropped.items())
    assert "wronganswer" in dropped and "wrong answer" in dropped
    assert "runfails" in dropped and "too many resources" in dropped
    assert torch.equal(fp4core.mm_fp4(*args), want)


# -- item 4: a bad tuning cache is a warning, never a failed GEMM ------------------------------
def test_non_utf8_cache_warns_and_every_call_works(tmp_path, monkeypatch):
    path = tmp_path / "user-cache.json"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    monkeypatch.setenv("FP4CORE_TUNING_CACHE", str(path))
    args = small_call()
    with pytest.warns(RuntimeWarning, match="cannot read tuning cache"):
        want = fp4core.mm_fp4(*args, backend="torch")
        assert torch.equal(fp4core.mm_fp4(*args), want)
    assert fp4core.explain(*args).choice is not None


@pytest.mark.parametrize("entry", [
    {"backend": "torch"},                                 # no tactic
    {"backend": 3, "tactic": {}, "us": 1.0},               # wrong type
    ["not", "a", "dict"],
    {"backend": "torch", "tactic": "fast", "us": "x"},
])
def test_malformed_cache_entries_are_dropped_with_a_warning(tmp_path, monkeypatch, entry):
    args = small_call()
    key = problem_key(fp4core.explain(*args).problem)
    path = tmp_path / "user-cache.json"
    path.write_text(json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "entries": {key: entry}}))
    monkeypatch.setenv("FP4CORE_TUNING_CACHE", str(path))
    with pytest.warns(RuntimeWarning, match="ignoring 1 malformed entry"):
        want = fp4core.mm_fp4(*args, backend="torch")
        assert torch.equal(fp4core.mm_fp4(*args), want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read once: no warning per call
        assert fp4core.explain(*args).choice is not None
        with fp4core.autotune(force=True, verbose=False):
            assert torch.equal(fp4core.mm_fp4(*args), want)


def test_unwritable_cache_location_warns_from_autotune_and_tune(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FP4CORE_TUNING_CACHE", str(blocker / "tuning.json"))
    args = small_call()
    want = fp4core.mm_fp4(*args, backend="torch")
    with pytest.warns(RuntimeWarning, match="could not write the tuning cache"):
        with fp4core.autotune(verbose=False):
            got = fp4core.mm_fp4(*args)
    assert torch.equal(got, want)
    res = subprocess.run([sys.executable, "-m", "fp4core.tools.cli", "tune", "--m", "3", "--n", "32", "--k", "64"],
                         capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "FP4CORE_TUNING_CACHE": str(blocker / "t.json")})
    assert res.returncode == 0, res.stderr
    assert "could not write the tuning cache" in res.stderr


# -- item 1: offline tuning survives a candidate that kills its process ----------------------------
def test_tune_leaves_out_a_candidate_that_kills_the_worker_and_records_why(fault_plugins, tmp_path):
    import os
    cache = tmp_path / "tuning.json"
    env = {**os.environ, "FP4CORE_TUNING_CACHE": str(cache), "FP4CORE_BACKENDS": "torch,killsprocess",
           "PYTHONPATH": os.pathsep.join([str(fault_plugins), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "fp4core.tools.cli", "tune", "--m", "3,5", "--n", "32", "--k", "64"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "killsprocess[crash=1]: killed the tuning worker (exit code 134" in res.stderr
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 2, entries.keys()
    for entry in entries.values():
        assert "killed the tuning worker" in entry["dropped"]["killsprocess[crash=1]"]
        timed = {name: rec["tactic"] for name, rec in entry["per_backend"].items()}
        assert timed.get("killsprocess") == {"crash": 0}, timed  # its good tactic was still timed
    assert res.stdout.count("left out (killed the worker): killsprocess[crash=1]") == 2, res.stdout
    # in process, the same candidate takes the whole tuning run down with it
    res = subprocess.run([sys.executable, "-m", "fp4core.tools.cli", "tune", "--in-process", "--force",
                          "--m", "3", "--n", "32", "--k", "64"], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 134


def test_tune_leaves_out_a_candidate_that_hangs_and_records_why(fault_plugins, tmp_path):
    """A candidate that never returns (a deadlocked kernel) stops the worker without killing
    it: after FP4CORE_TUNE_STALL_S without progress the worker is killed, the candidate left
    out with the reason, and the good tactic still timed."""
    import os
    import time
    cache = tmp_path / "tuning.json"
    env = {**os.environ, "FP4CORE_TUNING_CACHE": str(cache), "FP4CORE_BACKENDS": "torch,hangs",
           "FP4CORE_TUNE_STALL_S": "4",
           "PYTHONPATH": os.pathsep.join([str(fault_plugins), os.environ.get("PYTHONPATH", "")])}
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "fp4core.tools.cli", "tune", "--m", "3", "--n", "32", "--k", "64"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert time.monotonic() - t0 < 120  # not the hour the tactic sleeps
    assert "hangs[hang=1]: hung the tuning worker (made no progress for 4 s" in res.stderr, res.stderr
    entry = next(iter(json.loads(cache.read_text())["entries"].values()))
    assert "hung the tuning worker" in entry["dropped"]["hangs[hang=1]"]
    assert entry["per_backend"]["hangs"]["tactic"] == {"hang": 0}
    assert "left out (hung): hangs[hang=1]" in res.stdout, res.stdout


def test_tune_stall_limit_is_checked(monkeypatch):
    from fp4core.dispatch import tune_worker
    monkeypatch.setenv("FP4CORE_TUNE_STALL_S", "soon")
    with pytest.raises(ValueError, match="FP4CORE_TUNE_STALL_S.*number of seconds.*'soon'"):
        tune_worker.stall_limit()
    monkeypatch.setenv("FP4CORE_TUNE_STALL_S", "0")
    with pytest.raises(ValueError, match="positive"):
        tune_worker.stall_limit()
    monkeypatch.delenv("FP4CORE_TUNE_STALL_S")
    assert tune_worker.stall_limit() == tune_worker.DEFAULT_STALL_S


def test_tune_reports_a_problem_it_cannot_tune_and_goes_on(fault_plugins, tmp_path):
    import os
    env = {**os.environ, "FP4CORE_TUNING_CACHE": str(tmp_path / "t.json"), "FP4CORE_BACKENDS": "runfails",
           "PYTHONPATH": os.pathsep.join([str(fault_plugins), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "fp4core.tools.cli", "tune", "--m", "3", "--n", "32", "--k", "64"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "3x32x64: NOT TUNED:" in res.stdout and "every candidate failed" in res.stdout
    assert "Traceback" not in res.stderr


# -- item 6: switches -----------------------------------------------------------------------------
@pytest.mark.parametrize("value,want", [("1", True), ("true", True), ("YES", True), ("on", True),
                                        ("", False), ("0", False), ("false", False), ("No", False),
                                        ("off", False)])
def test_env_flag_words(monkeypatch, value, want):
    monkeypatch.setenv("FP4CORE_SOME_SWITCH", value)
    assert env_flag("FP4CORE_SOME_SWITCH") is want


def test_env_flag_refuses_other_words_naming_the_variable(monkeypatch):
    monkeypatch.setenv("FP4CORE_AUTOTUNE", "banana")
    with pytest.raises(ValueError, match="FP4CORE_AUTOTUNE.*'banana'"):
        selector.tuning_enabled()


def test_autotune_false_means_off(monkeypatch):
    monkeypatch.setenv("FP4CORE_AUTOTUNE", "false")
    assert not selector.tuning_enabled()
    monkeypatch.setenv("FP4CORE_AUTOTUNE", "1")
    assert selector.tuning_enabled()


def test_disable_autoload_false_keeps_autoload_on(monkeypatch):
    code = ("import fp4core; print(sorted(b.name for b in fp4core.dispatch.selector.selector.registry.backends()))")
    env = {**__import__("os").environ, "FP4CORE_DISABLE_PLUGIN_AUTOLOAD": "false"}
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    env["FP4CORE_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert off.stdout.strip() == "['torch']"
    from importlib import metadata
    if list(metadata.entry_points(group="fp4core.backends")):  # some plugin is installed here
        assert on.stdout.strip() != "['torch']"


# -- items 2 and 3: non-finite inputs and bad global scales ---------------------------------------
def test_inf_in_the_activations_affects_only_its_own_block():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 64, generator=g)
    w = torch.randn(24, 64, generator=g)
    clean_gs = fp4core.compute_global_scale(x)
    x_bad = x.clone()
    x_bad[2, 17] = float("inf")  # not the amax element of x
    assert torch.equal(fp4core.compute_global_scale(x_bad), clean_gs)
    lin = torch.nn.Linear(64, 24, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    layer = fp4core.pytorch.nn.Fp4Linear.from_linear(lin)
    y_bad = layer(x_bad)
    y = layer(x)
    keep = [0, 1, 3, 4, 5]
    assert torch.equal(y_bad[keep], y[keep])  # every other row untouched, bit for bit
    assert not torch.isfinite(y_bad[2]).all()  # the bad row says so (NaN scale)


def test_compute_global_scale_ignores_nan_and_inf_and_handles_empty():
    x = torch.tensor([[1.0, -3.0, float("nan"), float("-inf")] * 4])
    assert torch.equal(fp4core.compute_global_scale(x), torch.tensor([2688.0 / 3.0]))
    assert torch.equal(fp4core.compute_global_scale(torch.empty(0, 16)), torch.ones(1))
    assert torch.equal(fp4core.compute_global_scale(torch.full((2, 16), float("inf"))), torch.ones(1))


@pytest.mark.parametrize("gs", [-1.0, 0.0, float("nan"), float("inf")])
def test_nvfp4_quantize_refuses_a_bad_global_scale(gs):
    with pytest.raises(ValueError, match="global_scale: expected one positive finite value"):
        fp4core.nvfp4_quantize(torch.randn(4, 32), torch.tensor([gs]))
    with pytest.raises(ValueError, match="global_scale: expected one positive finite value"):
        fp4core.quantize_fp4(torch.randn(4, 32), "nvfp4", "128x4", gs)


# -- item 7: empty batches and CLI errors ----------------------------------------------------------
@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_fp4linear_empty_batch_matches_nn_linear(fmt):
    lin = torch.nn.Linear(64, 40)
    layer = fp4core.pytorch.nn.Fp4Linear.from_linear(lin, format=fmt)
    for shape in [(0, 64), (3, 0, 64)]:
        x = torch.randn(*shape)
        assert layer(x).shape == lin(x).shape


def test_cli_reports_a_missing_shapes_file_and_an_unwritable_json_without_traceback(tmp_path):
    def cli(*argv):
        return subprocess.run([sys.executable, "-m", "fp4core.tools.cli", *argv], capture_output=True, text=True,
                              timeout=300)
    res = cli("bench", "--shapes-file", str(tmp_path / "missing.txt"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--shapes-file: cannot read" in res.stderr
    bad = tmp_path / "shapes.txt"
    bad.write_text("1 2\n")
    res = cli("tune", "--shapes-file", str(bad))
    assert res.returncode == 2 and f"{bad}:1: expected 'M N K'" in res.stderr
    res = cli("bench", "--m", "1", "--n", "32", "--k", "64", "--json", str(tmp_path / "no" / "x.json"))
    assert res.returncode == 2 and "--json: cannot write" in res.stderr and "Traceback" not in res.stderr
