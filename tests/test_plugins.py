"""Plugin discovery through a real installed distribution, isolation of broken plugins,
the autoload environment variables and in-process registration."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fp4core
from fp4core.dispatch.selector import selector
from fp4core.testing import check_backend, registered

FIXTURE = Path(__file__).parent / "fixtures" / "fp4core-test-plugins"


@pytest.fixture(scope="module")
def installed_plugins(tmp_path_factory):
    """pip-install the test distribution into a private folder and put it on sys.path."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(FIXTURE)], check=True)
    sys.path.insert(0, str(target))
    selector.registry.reset()
    yield target
    sys.path.remove(str(target))
    selector.registry.reset()


@pytest.fixture
def fresh_registry():
    selector.registry.reset()
    yield selector.registry
    selector.registry.reset()


@pytest.fixture
def builtins_only(fresh_registry, monkeypatch):
    """Only built-ins plus what a test registers in-process."""
    monkeypatch.setenv("FP4CORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    return fresh_registry


def statuses():
    return {s.name: s for s in fp4core.backends()}


def small_call(m=5, n=24, k=64):
    x, w = torch.randn(m, k), torch.randn(n, k)
    gx, gw = fp4core.compute_global_scale(x), fp4core.compute_global_scale(w)
    a, asf = fp4core.nvfp4_quantize(x, gx)
    b, bsf = fp4core.nvfp4_quantize(w, gw)
    return a, b.T, asf, bsf.T, (1 / (gx * gw)).float()


def test_entry_points_are_discovered_and_broken_ones_reported(installed_plugins, fresh_registry):
    st = statuses()
    assert st["good"].status == "loaded" and st["good"].origin == "fp4core-test-plugins 0.0.1"
    assert st["importfail"].status == "broken"
    assert "import failed: ImportError: libfancy.so" in st["importfail"].error
    assert st["nohooks"].status == "broken" and "missing required hook(s) run" in st["nohooks"].error
    assert st["misnamed"].status == "broken" and "must match" in st["misnamed"].error
    assert st["raising"].status == "loaded"
    assert st["torch"].status == "loaded"


def test_auto_skips_broken_and_raising_plugins(installed_plugins, fresh_registry):
    args = small_call()
    exp = fp4core.explain(*args)
    assert exp.choice.backend.name == "good" and exp.choice.source == "heuristic"
    assert exp.candidates == ["good", "torch"]
    assert "supports() raised RuntimeError: driver exploded" in exp.excluded["raising"]
    assert "failed to load" in exp.excluded["importfail"]
    want = fp4core.mm_fp4(*args, backend="torch")
    assert torch.equal(fp4core.mm_fp4(*args), want)
    assert fp4core.supported_backends(*args) == ["good", "torch"]
    st = statuses()
    assert "driver exploded" in st["raising"].error
    with pytest.raises(fp4core.BackendNotInstalledError, match="failed to load: import failed"):
        fp4core.mm_fp4(*args, backend="importfail")
    with pytest.raises(fp4core.BackendUnsupportedError, match="driver exploded"):
        fp4core.mm_fp4(*args, backend="raising")
    check_backend("good", fp4core.make_problem(7, 40, 64, device="cpu"))


def test_disable_autoload(installed_plugins, fresh_registry, monkeypatch):
    monkeypatch.setenv("FP4CORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert set(statuses()) == {"torch"}


def test_backends_env_restricts(installed_plugins, fresh_registry, monkeypatch):
    monkeypatch.setenv("FP4CORE_BACKENDS", "good")
    st = statuses()
    assert st["good"].status == "loaded"
    assert st["torch"].status == "disabled" and st["raising"].status == "disabled"
    with pytest.raises(fp4core.BackendNotInstalledError, match="'torch' is disabled"):
        fp4core.mm_fp4(*small_call(), backend="torch")
    assert fp4core.explain(*small_call()).choice.backend.name == "good"


class InProcess:
    @fp4core.hookimpl
    def backend_info(self):
        return fp4core.BackendInfo(name="inproc", version="1", priority={"decode": 5})

    @fp4core.hookimpl
    def supports(self, problem):
        if problem.k > 64:
            return fp4core.Support.no("k > 64 is not implemented")
        return fp4core.Support.yes()

    @fp4core.hookimpl
    def run(self, problem, operands, tactic, out):
        out.fill_(1.0)  # deliberately wrong


def test_in_process_registration(builtins_only):
    with registered(InProcess) as be:
        assert be.name == "inproc" and statuses()["inproc"].origin == "registered by fp4core.testing"
        assert fp4core.supported_backends(fp4core.make_problem(4, 8, 64, device="cpu")) == ["inproc", "torch"]
        exp = fp4core.explain(fp4core.make_problem(4, 8, 128, device="cpu"))
        assert exp.excluded["inproc"] == "k > 64 is not implemented"
        with pytest.raises(AssertionError, match="inproc.*relative error"):
            check_backend("inproc", fp4core.make_problem(3, 8, 64, device="cpu"))
        with pytest.raises(ValueError, match="already registered"):
            fp4core.register_backend(InProcess())
    assert "inproc" not in statuses()
    with pytest.raises(KeyError, match="no backend named"):
        fp4core.unregister_backend("inproc")


def test_invalid_plugins_are_refused_with_reason(builtins_only):
    class NoInfo:
        @fp4core.hookimpl
        def supports(self, problem):
            return True

    class BadInfo(NoInfo):
        @fp4core.hookimpl
        def backend_info(self):
            return {"name": "x"}

        @fp4core.hookimpl
        def run(self, problem, out):
            pass

    class BadArg(NoInfo):
        @fp4core.hookimpl
        def backend_info(self):
            return fp4core.BackendInfo("badarg", "1")

        @fp4core.hookimpl
        def run(self, problem, not_an_argument):
            pass

    with pytest.raises(ValueError, match="missing required hook"):
        fp4core.register_backend(NoInfo)
    with pytest.raises(ValueError, match="must return fp4core.BackendInfo"):
        fp4core.register_backend(BadInfo)
    with pytest.raises(ValueError, match="not_an_argument"):
        fp4core.register_backend(BadArg)


def test_is_backend_supported_answers_for_auto(builtins_only):
    assert fp4core.is_backend_supported("auto", 90) is True
    assert fp4core.is_backend_supported("torch", (10, 0)) is True
    assert fp4core.is_backend_supported("nosuch", 90) is False
    with registered(InProcess):
        # the probe problem has K = 4096, which InProcess refuses
        assert fp4core.is_backend_supported("inproc") is False


def test_plugins_live_in_pluggy_under_their_backend_names(installed_plugins, fresh_registry, monkeypatch):
    """Issue 17 item 3: pluggy knows each backend by its name, FP4CORE_BACKENDS blocks names in
    pluggy, and hooks other than run go through pluggy's hook calling (so monitoring sees them)."""
    monkeypatch.setenv("FP4CORE_BACKENDS", "torch,good")
    fresh_registry.reset()
    pm = fresh_registry.plugin_manager
    fresh_registry.ensure_loaded()
    assert type(pm.get_plugin("torch")).__name__ == "TorchBackend"
    assert type(pm.get_plugin("good")).__name__ == "GoodBackend"
    assert pm.is_blocked("raising") and "raising" in fresh_registry.disabled()
    calls = []
    undo = pm.add_hookcall_monitoring(lambda name, impls, kw: calls.append((name, [i.plugin_name for i in impls])),
                                      lambda *a: None)
    try:
        problem = fp4core.make_problem(5, 24, 64, device="cpu")
        good = fresh_registry.get("good")
        assert good.supports(problem) and [t.label() for t in good.tactics(problem)] == ["variant=1", "variant=2"]
        out = torch.empty(5, 24, dtype=torch.bfloat16)
        from fp4core.testing import canonical_operands
        good.run(problem, canonical_operands(problem), good.tactics(problem)[0], out)
    finally:
        undo()
    assert ("supports", ["good"]) in calls and ("tactics", ["good"]) in calls  # one plugin per call
    assert not any(name == "run" for name, _ in calls)  # run is called directly (host time)


def test_unhashable_plugin_and_wrong_tactic_types_are_reported(builtins_only):
    class Unhashable:
        __hash__ = None

        @fp4core.hookimpl
        def backend_info(self):
            return fp4core.BackendInfo(name="unhashable", version="1")

        @fp4core.hookimpl
        def supports(self, problem):
            return fp4core.Support.yes()

        @fp4core.hookimpl
        def run(self, problem, operands, out):
            pass

    with pytest.raises(ValueError, match="unhashable"):
        fp4core.register_backend(Unhashable())

    class DictTactics(Unhashable):
        __hash__ = object.__hash__

        @fp4core.hookimpl
        def backend_info(self):
            return fp4core.BackendInfo(name="dicttactics", version="1")

        @fp4core.hookimpl
        def tactics(self, problem):
            return [{"tile": 1}]

    with registered(DictTactics) as be:
        with pytest.raises(fp4core.BackendFailedError, match="tactics must be Tactic instances"):
            be.tactics(fp4core.make_problem(1, 8, 16, device="cpu"))

    class Loose(fp4core.Tactic):  # not a dataclass of its own: its field would be invisible
        x: int = 1

    class LooseInfo(DictTactics):
        @fp4core.hookimpl
        def backend_info(self):
            return fp4core.BackendInfo(name="loose", version="1", tactic_type=Loose)

    with pytest.raises(ValueError, match="frozen=True"):
        fp4core.register_backend(LooseInfo())
