"""fp4core build / fp4core.build(): the optional ``build`` hook, arch defaults, errors."""

import pytest
import torch

import fp4core
from fp4core.tools.cli import main
from fp4core.tools.prebuild import arch_of
from fp4core.testing import registered


class Builder:
    """A backend whose build hook records what it was asked for."""

    def __init__(self):
        self.calls = []

    @fp4core.hookimpl
    def backend_info(self):
        return fp4core.BackendInfo(name="builder", version="1", targets=("sm_90a",))

    @fp4core.hookimpl
    def supports(self, problem):
        return fp4core.Support.no("test backend")

    @fp4core.hookimpl
    def run(self, problem, operands, tactic, out):
        raise AssertionError("never run")

    @fp4core.hookimpl
    def build(self, archs, progress):
        self.calls.append((list(archs), progress))
        return [f"lib for {a}" for a in archs if a == "sm_90a"]


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("FP4CORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    fp4core.dispatch.selector.selector.registry.reset()
    yield
    fp4core.dispatch.selector.selector.registry.reset()


def test_build_calls_only_backends_with_the_hook():
    plugin = Builder()
    with registered(plugin) as backend:
        assert backend.can_build and not fp4core.dispatch.selector.selector.registry.get("torch").can_build
        result = fp4core.build(archs=["90a", "sm_100a"], progress=False)
    # Archs are normalised to nvcc names; the torch backend has no build hook.
    assert result == {"builder": ["lib for sm_90a"]}
    assert plugin.calls == [(["sm_90a", "sm_100a"], False)]


def test_naming_a_backend_without_the_hook_builds_nothing():
    assert fp4core.build(["torch"], ["sm_90a"], progress=False) == {"torch": []}


def test_build_errors_name_the_argument():
    with pytest.raises(ValueError, match="backends: 'nope' not loaded"):
        fp4core.build(["nope"], ["sm_90a"], progress=False)
    with pytest.raises(ValueError, match="arch: expected"):
        fp4core.build(None, ["ampere"], progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="archs: no CUDA device"):
            fp4core.build(progress=False)


def test_arch_names():
    assert arch_of((9, 0)) == "sm_90a" and arch_of((10, 0)) == "sm_100a"
    assert arch_of((8, 9)) == "sm_89" and arch_of((12, 0)) == "sm_120a"


def test_cli_build(capsys):
    with registered(Builder()):
        assert main(["build", "--arch", "sm_90a", "--arch", "sm_80"]) == 0
    out = capsys.readouterr()
    assert "builder: 1 built" in out.out and "lib for sm_90a" in out.out
    assert "fp4core build: builder for sm_90a, sm_80" in out.err
    assert main(["build", "--arch", "sm_90a", "--backends", "missing"]) == 2
    assert "not loaded" in capsys.readouterr().err
