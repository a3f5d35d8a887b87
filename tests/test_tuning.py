"""auto + autotuning with a fake clock: choice, dropped candidates, the persistent cache."""

import contextvars
import dataclasses
import json
import subprocess
import sys
import threading
import warnings

import pytest
import torch

import fp4core
from fp4core.dispatch.selector import selector
from fp4core.dispatch.selector import selector
from fp4core.dispatch.problem import DeviceInfo
from fp4core.testing import registered
from fp4core.dispatch.torch_backend import TorchBackend
from fp4core.dispatch.tuning_cache import m_bucket, problem_key

RUNS = []  # (backend, tactic label) of every run, read by the fake timer
_TORCH_MATH = TorchBackend.run  # unpatched, for fakes that compute the right answer


class FakeTimer:
    """Calls the candidate once and reports the time table's value for it; the interleaved
    runoff reports ``runoff[key]`` where given (a drift the sweep did not see), else the same."""

    def __init__(self, table, runoff=None):
        self.table = table
        self.runoff = runoff or {}
        self.measured = []
        self.interleaved = []

    def measure(self, run, n_sets):
        run(0)
        key = RUNS[-1]
        self.measured.append(key)
        return [self.table[key]]

    def measure_interleaved(self, runs):
        out = []
        for run, _ in runs:
            run(0)
            key = RUNS[-1]
            self.interleaved.append(key)
            out.append([self.runoff.get(key, self.table[key])])
        return out


@dataclasses.dataclass(frozen=True)
class T(fp4core.Tactic):
    t: int = 1


def make_backend(name, behaviour="correct", tactics=(T(1), T(2)), priority=1, version="1.0"):
    class Fake:
        @fp4core.hookimpl
        def backend_info(self):
            return fp4core.BackendInfo(name=name, version=version, priority={"decode": priority, "small": priority},
                                       tactic_type=T)

        @fp4core.hookimpl
        def supports(self, problem):
            return fp4core.Support.yes()

        @fp4core.hookimpl
        def tactics(self, problem):
            return list(tactics)

        @fp4core.hookimpl
        def run(self, problem, operands, tactic, out):
            RUNS.append((name, tactic.t))
            if behaviour == "raises":
                raise RuntimeError("kernel launch failed")
            if behaviour == "wrong":
                out.zero_()
                return
            if behaviour == "unwritten":
                return
            _TORCH_MATH(TorchBackend(), problem, operands, out)

    return Fake()


def record_torch_runs(monkeypatch):
    orig_run = TorchBackend.run

    def recording_run(self, problem, operands, out):
        RUNS.append(("torch", None))
        orig_run(self, problem, operands, out)

    monkeypatch.setattr(TorchBackend, "run", fp4core.hookimpl(recording_run))


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setenv("FP4CORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    selector.registry.reset()
    RUNS.clear()
    record_torch_runs(monkeypatch)
    timer = FakeTimer({("fast", 1): 30.0, ("fast", 2): 20.0, ("slow", 1): 50.0, ("slow", 2): 60.0,
                       ("torch", None): 500.0})
    monkeypatch.setattr(selector, "timer", timer)
    with registered(make_backend("fast", priority=1)), registered(make_backend("slow", priority=9)), \
            registered(make_backend("wrong", "wrong", priority=5)), \
            registered(make_backend("raiser", "raises", priority=5)), \
            registered(make_backend("lazy", "unwritten", priority=5)):
        yield timer
    selector.registry.reset()


P = fp4core.make_problem(6, 32, 64, device="cpu")


def test_heuristic_then_tuned_then_cached(fakes):
    assert selector.choose(P).backend.name == "slow"  # highest priority, untuned
    assert selector.choose(P).source == "heuristic"
    with fp4core.autotune(verbose=False):
        choice = selector.choose(P)
    assert (choice.backend.name, choice.tactic, choice.source) == ("fast", T(2), "tuned")
    entry = json.loads(selector.cache.path.read_text())["entries"][problem_key(P)]
    assert entry["backend"] == "fast" and entry["us"] == 20.0
    assert "raised RuntimeError: kernel launch failed" in entry["dropped"]["raiser[t=1]"]
    assert "wrong answer: relative error" in entry["dropped"]["wrong[t=1]"]
    assert "relative error inf" in entry["dropped"]["lazy[t=1]"]  # NaN poison left in place
    # wrong candidates were never timed
    assert all(name in ("fast", "slow", "torch") for name, _ in fakes.measured)
    assert selector.choose(P).source == "cache"
    # explicit backend calls use that backend's own best tactic from the same tuning run
    assert selector.choose(P, "slow").tactic == T(1)
    # the same bucket (m 4..7) shares the result; another bucket does not
    assert selector.choose(P.with_m(7)).source == "cache"
    assert selector.choose(P.with_m(8)).source == "heuristic"


def test_mm_fp4_inside_autotune_returns_correct_result(fakes):
    x, w = torch.randn(6, 64), torch.randn(32, 64)
    a, asf = fp4core.nvfp4_quantize(x, 1.0)
    b, bsf = fp4core.nvfp4_quantize(w, 1.0)
    want = fp4core.mm_fp4(a, b.T, asf, bsf.T, backend="torch")
    with fp4core.autotune(verbose=False):
        got = fp4core.mm_fp4(a, b.T, asf, bsf.T)
    assert torch.equal(got, want)


def test_force_retunes_once_per_bucket(fakes):
    with fp4core.autotune(verbose=False):
        selector.choose(P)
    n = len(fakes.measured)
    with fp4core.autotune(verbose=False):
        selector.choose(P)
    assert len(fakes.measured) == n  # cached: no new timing
    with fp4core.autotune(force=True, verbose=False):
        selector.choose(P)
        selector.choose(P)
    assert len(fakes.measured) == 2 * n


def test_autotune_false_is_a_no_op(fakes):
    with fp4core.autotune(False):
        assert selector.choose(P).source == "heuristic"
    assert not fakes.measured


def test_tune_on_first_use_env(fakes, monkeypatch):
    monkeypatch.setenv("FP4CORE_AUTOTUNE", "1")
    assert selector.choose(P).source == "tuned"
    assert selector.cache.path.exists()  # saved right away


def test_backend_version_change_invalidates(fakes):
    with fp4core.autotune(verbose=False):
        selector.choose(P)
    selector.registry.unregister("fast")
    selector.registry.register(make_backend("fast", version="2.0"))
    c = selector.choose(P)
    assert c.source == "heuristic" and c.backend.name == "slow"
    assert selector.choose(P, "slow").tactic == T(1)  # slow's own record is still valid


def test_corrupt_cache_file_warns_and_is_replaced(fakes):
    path = selector.cache.path
    path.write_text("{ not json")
    selector.cache.clear()
    selector.cache._loaded_from = None
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert selector.choose(P).source == "heuristic"
    with fp4core.autotune(verbose=False):
        selector.choose(P)
    assert json.loads(path.read_text())["format"] == "fp4core-tuning-cache"


@pytest.mark.parametrize("doc,match", [({"format": "other"}, "not an fp4core tuning cache"),
                                       ({"format": "fp4core-tuning-cache", "version": 99}, "format version 99")])
def test_foreign_or_future_cache_is_ignored(fakes, doc, match):
    selector.cache.path.write_text(json.dumps(doc))
    selector.cache._loaded_from = None
    with pytest.warns(RuntimeWarning, match=match):
        assert selector.choose(P).source == "heuristic"


def test_cache_is_read_by_a_fresh_process(tmp_path, monkeypatch):
    """Tune the torch backend here, then ask a new interpreter what auto would do."""
    monkeypatch.setenv("FP4CORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    selector.registry.reset()
    monkeypatch.setattr(selector, "timer", FakeTimer({("torch", None): 1.0}))
    RUNS.clear()
    record_torch_runs(monkeypatch)
    with fp4core.autotune(verbose=False):
        assert selector.choose(P).source == "tuned"
    code = ("import fp4core; p = fp4core.make_problem(6, 32, 64, device='cpu'); "
            "print(fp4core.explain(p).choice.source)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "cache"
    selector.registry.reset()


def test_no_tuning_during_graph_capture(monkeypatch):
    cuda_problem = fp4core.make_problem(16, 64, 64, device=DeviceInfo("cuda", 0, "fake", (9, 0)))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with selector.tuning():
        assert selector.tuning_enabled()
        assert not selector._can_tune_now(cuda_problem)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    with selector.tuning():
        assert selector._can_tune_now(cuda_problem)


def test_concurrent_first_calls_tune_once(fakes):
    """Threads started with the tuning context's variables (copy_context) share its mode:
    eight first calls of one bucket tune it once."""
    results, errors = [], []

    def worker():
        try:
            results.append(selector.choose(P).backend.name)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with fp4core.autotune(verbose=False):
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(worker,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and results == ["fast"] * 8
    assert fakes.measured.count(("fast", 2)) == 1


def test_tuning_mode_is_context_local(fakes):
    """autotune() in one thread does not make another thread's calls tune (no process-wide
    switch), and leaving the context leaves no mode behind."""
    seen = []
    inside, done = threading.Event(), threading.Event()

    def tuner():
        with fp4core.autotune(verbose=False, save=False):
            inside.set()
            done.wait(10)

    t = threading.Thread(target=tuner)
    t.start()
    inside.wait(10)
    seen.append((selector.tuning_enabled(), selector.choose(P).source))
    done.set()
    t.join()
    assert seen == [(False, "heuristic")] and fakes.measured == []
    assert not selector.tuning_enabled()


def test_m_bucket():
    assert [m_bucket(m) for m in (1, 2, 3, 4, 7, 8, 129, 5000, 100000)] == [1, 2, 2, 4, 4, 8, 128, 4096, 16384]


def test_no_backend_lists_every_reason(monkeypatch):
    monkeypatch.setenv("FP4CORE_BACKENDS", "nothing")
    selector.registry.reset()
    try:
        with pytest.raises(fp4core.NoBackendError, match="torch: disabled"):
            selector.choose(P)
    finally:
        monkeypatch.delenv("FP4CORE_BACKENDS")
        selector.registry.reset()


def test_explain_text_names_choice_and_exclusions(fakes):
    with fp4core.autotune(verbose=False):
        selector.choose(P)
    text = str(fp4core.explain(P))
    assert "choice:    fast [t=2] from cache" in text
    assert "tuned fast: 20.0 us" in text and "dropped while tuning wrong[t=1]" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fp4core.explain(P)


def test_runoff_between_close_backends_decides_on_interleaved_times(fakes, monkeypatch):
    """The sweep saw "fast" at 20 us and "slow" at 50 us (outside the runoff window): no runoff.
    When the two are close, the interleaved re-timing, not the sequential sweep, picks."""
    with fp4core.autotune(verbose=False):
        selector.choose(P)
    assert fakes.interleaved == []  # 50 > 1.3 * 20: one finalist, nothing to re-time
    selector.cache.clear()
    close = FakeTimer({("fast", 1): 30.0, ("fast", 2): 21.0, ("slow", 1): 20.0, ("slow", 2): 60.0,
                       ("torch", None): 500.0}, runoff={("slow", 1): 26.0, ("fast", 2): 22.0})
    monkeypatch.setattr(selector, "timer", close)
    with fp4core.autotune(verbose=False):
        choice = selector.choose(P)
    # each backend's best tactic from the sweep went into the runoff, once, side by side
    assert sorted(close.interleaved) == [("fast", 2), ("slow", 1)]
    assert (choice.backend.name, choice.tactic) == ("fast", T(2))
    entry = json.loads(selector.cache.path.read_text())["entries"][problem_key(P)]
    assert entry["per_backend"]["slow"]["sweep_us"] == 20.0 and entry["per_backend"]["slow"]["us"] == 26.0
    assert entry["us"] == 22.0


def test_upgraded_or_new_candidate_makes_the_entry_retune(fakes):
    """A non-winning backend upgraded (or a backend installed) after tuning: the entry still
    names a valid winner and is used as it is without tuning, but with tuning on the bucket is
    re-tuned once, so the upgraded backend is timed (and can win) and gets its own tuned tactic."""
    with fp4core.autotune(verbose=False):
        assert selector.choose(P).backend.name == "fast"
    n = len(fakes.measured)
    # the backends that tuning dropped (wrong answers, raising, unwritten output) count as seen
    assert fp4core.explain(P).untuned == [] and fp4core.explain(P).cache_entry.dropped
    # slow 2.0 is now the fastest (its t=2 at 10 us)
    selector.registry.unregister("slow")
    selector.registry.register(make_backend("slow", priority=9, version="2.0"))
    fakes.table[("slow", 2)] = 10.0
    exp = fp4core.explain(P)
    assert exp.untuned == ["slow"] and "not timed at their installed version: slow" in str(exp)
    c = selector.choose(P)  # tuning off: the cached winner, no timing
    assert (c.backend.name, c.source) == ("fast", "cache") and len(fakes.measured) == n
    assert selector.choose(P, "slow").tactic == T(1)  # no record at 2.0: its default tactic
    with fp4core.autotune(verbose=False):
        c = selector.choose(P)
        selector.choose(P)
    assert (c.backend.name, c.tactic, c.source) == ("slow", T(2), "tuned")
    assert ("slow", 2) in fakes.measured[n:] and len(fakes.measured) < 2 * n + 2  # one re-tune
    assert fp4core.explain(P).untuned == []
    # a backend installed after tuning
    with registered(make_backend("newcomer", priority=0)):
        fakes.table[("newcomer", 1)] = fakes.table[("newcomer", 2)] = 5.0
        assert fp4core.explain(P).untuned == ["newcomer"]
        with fp4core.autotune(verbose=False):
            assert selector.choose(P).backend.name == "newcomer"
    # the newcomer uninstalled: the entry's winner is gone, so the entry is not used at all
    assert fp4core.explain(P).choice.source == "heuristic"
