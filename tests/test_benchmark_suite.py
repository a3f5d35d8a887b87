"""benchmarks/suite.sh on the CPU: its step list, the docs sections the steps name, and the
files it runs. The suite itself needs a GPU; a renamed script or docs heading must still fail
here, in CI, rather than on the next device call."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "suite.sh"
DOCS = ROOT / "docs" / "benchmarks.md"


def _listed_steps() -> dict[str, str]:
    """Step name -> the docs sections it reproduces, from ``suite.sh --list``."""
    out = subprocess.run(["bash", str(SUITE), "--list"], capture_output=True, text=True, timeout=30, check=True)
    steps = {}
    for line in out.stdout.splitlines():
        name, _, sections = line.strip().partition(" ")
        steps[name] = sections.strip()
    return steps


def _plain(text: str) -> str:
    return text.replace("`", "")


def test_list_names_every_step_and_only_defined_ones():
    steps = _listed_steps()
    defined = set(re.findall(r"^step_([\w-]+)\(\) \{", SUITE.read_text(), re.M))
    assert len(steps) >= 10
    assert set(steps) == defined


def test_every_listed_section_is_a_heading_of_the_benchmarks_page():
    headings = [_plain(h) for h in re.findall(r"^#+ (.*)$", DOCS.read_text(), re.M)]
    for step, sections in _listed_steps().items():
        for section in sections.split("; "):
            assert any(_plain(section) in h for h in headings), (step, section)


def test_every_path_the_suite_runs_exists():
    text = SUITE.read_text()
    paths = set(re.findall(r"(?:benchmarks|plugins|examples|tests)/[\w./-]+\.(?:py|sh|cu|txt)", text))
    # the probes step builds benchmarks/${p}_probe.cu for each of PROBES
    probes = re.search(r"\$\{PROBES:-([\w ]+)\}", text).group(1).split()
    paths |= {f"benchmarks/{p}_probe.cu" for p in probes}
    assert "benchmarks/device_env.sh" in paths and "benchmarks/auto_prepared.py" in paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


def test_reproducing_commands_name_listed_steps():
    """Every ``bash benchmarks/suite.sh STEP...`` on the benchmarks page names real steps."""
    steps = set(_listed_steps()) | {"help"}
    commands = re.findall(r"bash\s+benchmarks/suite\.sh((?:\s+[a-z][\w-]*)*)", DOCS.read_text())
    assert commands
    for args in commands:
        unknown = [a for a in args.split() if a not in steps]
        assert not unknown, args


@pytest.mark.parametrize("argv", [["--list"], ["help"]])
def test_list_and_help_need_no_device(argv):
    out = subprocess.run(["bash", str(SUITE), *argv], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "trtllm" in out.stdout


def test_unknown_step_is_refused_before_any_install():
    out = subprocess.run(["bash", str(SUITE), "no-such-step"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "unknown step" in out.stderr
