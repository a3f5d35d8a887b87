"""The fp4core command line on the CPU: every command's output and exit code."""

import json
import subprocess
import sys

import pytest
import torch

import fp4core
from fp4core.dispatch.selector import selector
from fp4core.tools.cli import main
from fp4core.testing import registered


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("FP4CORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    selector.registry.reset()
    yield
    selector.registry.reset()


class Broken:
    @fp4core.hookimpl
    def backend_info(self):
        return fp4core.BackendInfo(name="broken", version="0", targets=("sm100a",))

    @fp4core.hookimpl
    def supports(self, problem):
        return fp4core.Support.yes()

    @fp4core.hookimpl
    def run(self, problem, operands, tactic, out):
        out.fill_(3.0)


def test_backends_lists_torch_and_device(capsys):
    assert main(["backends"]) == 0
    text = capsys.readouterr().out
    assert "torch      loaded" in text and "supported" in text
    assert "no CUDA device" in text or "device " in text


def test_backends_marks_unverified_targets(capsys):
    with registered(Broken):
        main(["backends"])
    assert "not verified on hardware: sm100a" in capsys.readouterr().out


def test_bench_table_json_and_csv(tmp_path, capsys):
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    assert main(["bench", "--m", "1,3", "--n", "64", "--k", "64", "--json", str(js), "--csv", str(cs)]) == 0
    out = capsys.readouterr().out
    assert "bf16" in out and "auto:torch" in out and "WRONG" not in out
    rows = json.loads(js.read_text())
    assert {r["backend"] for r in rows} == {"bf16", "torch", "auto:torch"}
    assert all(r["rel_err"] <= 1e-2 for r in rows)
    # every ratio comes from a baseline timed interleaved with that row
    assert all(r["baseline_us"] > 0 and abs(r["speedup"] - r["baseline_us"] / r["median_us"]) < 1e-9
               for r in rows)
    assert cs.read_text().splitlines()[0].startswith("m,n,k,backend")


def test_bench_flags_wrong_backend_and_fails(capsys):
    with registered(Broken):
        rc = main(["bench", "--m", "2", "--n", "32", "--k", "64", "--backends", "broken,torch"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "WRONG" in cap.out and "WRONG results from: ['auto:broken', 'broken']" in cap.err


def test_explain_and_bad_input(capsys):
    assert main(["explain", "--m", "16", "--n", "64", "--k", "64"]) == 0
    assert "choice:    torch [default] from heuristic" in capsys.readouterr().out
    assert main(["explain", "--m", "16", "--n", "64", "--k", "24"]) == 2
    assert "multiple of the nvfp4 block size 16" in capsys.readouterr().err
    assert main(["explain", "--m", "16", "--n", "64", "--k", "64", "--backend", "cudnn"]) == 0
    assert "pip install fp4-cudnn" in capsys.readouterr().out


def test_tune_writes_the_cache(capsys):
    assert main(["tune", "--m", "4", "--n", "32", "--k", "64"]) == 0
    cap = capsys.readouterr()
    assert "torch [default] (cache)" in cap.out
    assert selector.cache.path.exists()
    assert "tuning 4x32x64" in cap.err  # progress on stderr


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "fp4core.tools.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "fp4core 0.1.0" in out.stdout


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    rc = main(["bench", "--m", "1", "--n", "32", "--k", "64", "--plot", str(tmp_path / "p.png")])
    assert rc == 2 and "--plot needs matplotlib: pip install matplotlib" in capsys.readouterr().err


def test_shapes_from_preset_and_file(tmp_path):
    from fp4core.tools.bench import shapes_from_args
    from fp4core.tools.cli import build_parser

    args = build_parser().parse_args(["bench", "--m", "1,8", "--preset", "gpt-oss-120b"])
    assert shapes_from_args(args) == [(1, 1280, 2880), (8, 1280, 2880), (1, 2880, 1024), (8, 2880, 1024)]
    f = tmp_path / "shapes.txt"
    f.write_text("# M N K\n4 64 128\n\n2 32 64\n")
    args = build_parser().parse_args(["bench", "--shapes-file", str(f)])
    assert shapes_from_args(args) == [(4, 64, 128), (2, 32, 64)]


class CudaOnly:
    """Refuses every problem (as GPU backends do on a machine without a GPU)."""

    @fp4core.hookimpl
    def backend_info(self):
        return fp4core.BackendInfo(name="cudaonly", version="0")

    @fp4core.hookimpl
    def supports(self, problem):
        return fp4core.Support.no("needs a CUDA device")

    @fp4core.hookimpl
    def run(self, problem, operands, tactic, out):
        raise AssertionError("must not run a problem it refused")


def test_bench_reports_unsupported_backends_without_failing(tmp_path, capsys):
    js = tmp_path / "r.json"
    with registered(CudaOnly):
        rc = main(["bench", "--m", "2", "--n", "32", "--k", "64", "--json", str(js)])
    out = capsys.readouterr().out
    assert rc == 0 and "cudaonly      n/a: needs a CUDA device" in out
    rows = {r["backend"]: r for r in json.loads(js.read_text())}
    assert rows["cudaonly"]["skipped"] == "needs a CUDA device" and rows["cudaonly"]["median_us"] == 0


def test_bench_prepared_lets_auto_consider_backends_that_need_their_layout(monkeypatch):
    """`fp4core bench --prepared` describes the calls as on a prepared weight: auto may then pick
    a backend with needs_prepare (before, the flag was accepted and ignored)."""
    from fp4core.dispatch.torch_backend import TorchBackend
    from fp4core.tools.bench import run_bench
    from fp4core.testing import registered

    class NeedsLayout:
        @fp4core.hookimpl
        def backend_info(self):
            return fp4core.BackendInfo(name="ownlayout", version="1", priority={"decode": 99}, needs_prepare=True)

        @fp4core.hookimpl
        def supports(self, problem):
            return fp4core.Support.yes()

        @fp4core.hookimpl
        def prepare(self, problem, operands):
            return operands

        @fp4core.hookimpl
        def run(self, problem, operands, out):
            assert problem.prepared
            TorchBackend().run(problem=problem, operands=operands, out=out)

    monkeypatch.setenv("FP4CORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    selector.registry.reset()
    try:
        with registered(NeedsLayout):
            auto = {p: next(r for r in run_bench([(2, 32, 64)], backends=["torch"], prepared=p)
                            if r.backend.startswith("auto")) for p in (False, True)}
        assert auto[False].backend == "auto:torch" and auto[True].backend == "auto:ownlayout"
        assert auto[True].correct
    finally:
        selector.registry.reset()


def test_bench_w4a16_times_weight_only_problems(tmp_path):
    """`fp4core bench --w4a16` (without --layer) times mm_bf16_fp4 problems: the torch backend is
    checked against the float64 reference of bf16 A x dequant(B), backends without bf16
    activations are listed as skipped, not run (before, the flag was accepted and ignored)."""
    js = tmp_path / "w4a16.json"
    assert main(["bench", "--w4a16", "--m", "3", "--n", "32", "--k", "64", "--json", str(js)]) == 0
    rows = {r["backend"]: r for r in json.loads(js.read_text())}
    assert rows["torch"]["correct"] and 0 < rows["torch"]["rel_err"] < 1e-2
    assert rows["auto:torch"]["correct"]
    for name, row in rows.items():
        if name not in ("bf16", "torch", "auto:torch", "tinygemm"):
            assert "activations" in row["skipped"], (name, row)
    # tinygemm is a CUDA kernel: a row only where one is there
    assert ("tinygemm" in rows) == torch.cuda.is_available()
