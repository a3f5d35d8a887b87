"""CPU checks of the helpers the plugins' bench scripts and GPU tests share:
fp4core.tools.bench_table (argument parsing, the markdown table) and
fp4core.testing.run_repeatedly (fresh NaN-filled outputs, one per run)."""

import fp4core
from fp4core.testing import run_repeatedly
from fp4core.tools.bench_table import MarkdownTable, parse_ms, parse_shapes


class CountingBackend:
    """Writes its call count into the first ``rows`` rows only (the rest stays as given)."""

    def __init__(self, rows):
        self.rows, self.calls, self.seen = rows, 0, []

    def run(self, problem, operands, tactic, out):
        self.calls += 1
        self.seen.append(out.isnan().all().item())
        out[: self.rows] = float(self.calls)


def test_run_repeatedly_gives_fresh_nan_outputs():
    problem = fp4core.make_problem(3, 64, 128, device="cpu")
    be = CountingBackend(rows=2)
    outs = run_repeatedly(be, problem, None, {"t": 1}, times=3)
    assert be.calls == 3 and be.seen == [True, True, True]
    assert [tuple(o.shape) for o in outs] == [(3, 64)] * 3 and outs[0].dtype == problem.out_dtype
    assert outs[2][0, 0].item() == 3.0 and outs[2][2].isnan().all()  # the unwritten row stays NaN


def test_parse_and_markdown_table(tmp_path, capsys):
    assert parse_ms("1,8,16") == [1, 8, 16]
    assert parse_shapes("8192:8192,2880:1024") == [(8192, 8192), (2880, 1024)]
    table = MarkdownTable(["M", "us"], title="device: x")
    table.add("| 1 | 2.0 |")
    assert capsys.readouterr().out == "| 1 | 2.0 |\n"
    assert table.text() == "device: x\n\n| M | us |\n|---|---|\n| 1 | 2.0 |"
    path = tmp_path / "t.md"
    table.save(str(path))
    table.save(str(path))
    assert path.read_text() == 2 * (table.text() + "\n\n")
    MarkdownTable(["M"]).save(str(path), mode="w")
    assert path.read_text() == "| M |\n|---|\n"
