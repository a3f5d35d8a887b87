"""fp4core bench --tactics / sweep_tactics: every tactic checked, then timed beside bf16."""

import dataclasses
import json
import time

import pytest
import torch

import fp4core
from fp4core.dispatch.selector import selector
from fp4core.tools.cli import main
from fp4core.tools.tactic_sweep import sweep_tactics
from fp4core.testing import registered


@dataclasses.dataclass(frozen=True)
class V(fp4core.Tactic):
    v: str = "slow"
    x: int | None = None


class Variants:
    """Four tactics: fast and right, slow and right, wrong answer, raising."""

    @fp4core.hookimpl
    def backend_info(self):
        return fp4core.BackendInfo(name="variants", version="1", tactic_type=V)

    @fp4core.hookimpl
    def supports(self, problem):
        return fp4core.Support.yes() if problem.n <= 256 else fp4core.Support.no("n > 256")

    @fp4core.hookimpl
    def tactics(self, problem):
        return [V("slow"), V("fast"), V("wrong"), V("raise")]

    @fp4core.hookimpl
    def run(self, problem, operands, tactic, out):
        if tactic.v == "raise":
            raise RuntimeError("no kernel for this")
        if tactic.v == "wrong":
            out.fill_(1.0)
            return
        selector.registry.get("torch").run(problem, operands, fp4core.Tactic(), out)
        if tactic.v == "slow":
            time.sleep(0.003)


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("FP4CORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    selector.registry.reset()
    yield
    selector.registry.reset()


def test_sweep_checks_then_times_every_tactic():
    lines = []
    with registered(Variants):
        sw = sweep_tactics("variants", 3, 64, 128, extra_tactics=[V("fast"), {"v": "slow", "x": 1}],
                           progress=lines.append)
    labels = [t.label for t in sw.timings]
    assert labels == ["v=slow", "v=fast", "v=wrong", "v=raise", "v=slow,x=1"]  # duplicate skipped
    by = {t.label: t for t in sw.timings}
    assert by["v=wrong"].error.startswith("wrong answer") and by["v=wrong"].us != by["v=wrong"].us
    assert "raised RuntimeError: no kernel for this" in by["v=raise"].error
    assert sw.best is by["v=fast"] and sw.first is by["v=slow"]
    assert by["v=slow"].us > 2500 > by["v=fast"].us  # microseconds per call
    assert 0 < by["v=fast"].rel_err <= 1e-2 and by["v=wrong"].rel_err > 1e-2
    assert sw.max_rel_err == max(by["v=fast"].rel_err, by["v=slow"].rel_err)
    assert sw.baseline_us > 0 and sw.speedup(by["v=fast"]) == sw.baseline_us / by["v=fast"].us
    assert lines[0].startswith("3x64x128: bf16") and len(lines) == 6


def test_sweep_errors_name_the_backend():
    with pytest.raises(ValueError, match="backend: 'nope' is not loaded"):
        sweep_tactics("nope", 1, 64, 64)
    with registered(Variants):
        with pytest.raises(ValueError, match="does not support .* n > 256"):
            sweep_tactics("variants", 1, 512, 64)


def test_cli_tactics_table_json_and_exit_code(tmp_path, capsys):
    js = tmp_path / "t.json"
    with registered(Variants):
        rc = main(["bench", "--tactics", "--backends", "variants", "--m", "2", "--n", "32", "--k", "64",
                   "--json", str(js)])
    out, err = capsys.readouterr()
    assert rc == 1 and "failed their check" in err  # the wrong and raising tactics
    assert "*" in next(line for line in out.splitlines() if line.endswith("v=fast"))
    assert next(line for line in out.splitlines() if "v=slow" in line).rstrip().endswith("^v=slow")
    rows = json.loads(js.read_text())
    assert rows[0]["backend"] == "variants" and len(rows[0]["timings"]) == 4
    assert main(["bench", "--tactics", "--m", "2", "--n", "32", "--k", "64"]) == 2
    assert "name exactly one backend" in capsys.readouterr().err


def test_w4a16_sweeps_weight_only_problems(capsys):
    """``bench --tactics --w4a16`` (and ``sweep_tactics(act_dtype=...)``) give the backend weight-only
    problems with bf16 activations, checked against the reference of a x dequant(b)."""
    seen = []

    class WeightOnly(Variants):
        @fp4core.hookimpl
        def backend_info(self):
            return fp4core.BackendInfo(name="variants", version="1", tactic_type=V,
                                       activations=("fp4", "bf16", "fp16"))

        @fp4core.hookimpl
        def run(self, problem, operands, tactic, out):
            seen.append((problem.act_dtype, operands.a.dtype))
            Variants.run(self, problem, operands, tactic, out)

    with registered(WeightOnly):
        sw = sweep_tactics("variants", 3, 64, 128, act_dtype=torch.bfloat16)
        by = {t.label: t for t in sw.timings}
        assert by["v=fast"].ok and 0 < by["v=fast"].rel_err <= 1e-2 and not by["v=wrong"].ok
        assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}
        seen.clear()
        main(["bench", "--tactics", "--w4a16", "--backends", "variants", "--m", "2", "--n", "32", "--k", "64"])
        assert set(seen) == {(torch.bfloat16, torch.bfloat16)}
        main(["bench", "--tactics", "--backends", "variants", "--m", "2", "--n", "32", "--k", "64"])
        assert (None, torch.uint8) in set(seen)  # without the flag: FP4 activations
    capsys.readouterr()
