"""What `pip install` gets: every package's wheel carries its kernel sources and its entry point
(an editable install, which the other tests use, would hide a missing package-data rule)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {  # folder -> (entry-point line, files the JIT build or the kernels need at run time)
    ".": (None, ["fp4core/formats/kernels/quantize_triton.py", "fp4core/pytest_plugin.py"]),
    "plugins/fp4-cutlass": ("cutlass = ", ["fp4_cutlass/csrc/fp4_sm90_gemm.cu", "fp4_cutlass/csrc/blockscaled_gemm.cuh",
                                           "fp4_cutlass/csrc/blockscaled_sm100.cu", "fp4_cutlass/csrc/blockscaled_sm120.cu"]),
    "plugins/fp4-trtllm": ("trtllm = ", ["fp4_trtllm/csrc/fp4_gemv.cu", "fp4_trtllm/csrc/fp4_splitk.cu",
                                         "fp4_trtllm/csrc/fp4_decode.cuh"]),
    "plugins/fp4-cudnn": ("cudnn = ", ["fp4_cudnn/_triton_kernels.py"]),
    "examples/fp4-triton": ("triton = ", ["fp4_triton/kernels.py"]),
}


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_wheel_carries_sources_and_entry_point(folder, tmp_path):
    if not (ROOT / folder / "pyproject.toml").is_file():
        pytest.skip(f"{folder} is not in this checkout")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT / folder)], check=True, capture_output=True)
    wheel, = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    entry, needed = PACKAGES[folder]
    missing = [f for f in needed if f not in names]
    assert not missing, f"{wheel.name} lacks {missing}"
    if entry is not None:
        ep = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = zipfile.ZipFile(wheel).read(ep).decode()
        assert "[fp4core.backends]" in text and entry in text, text


def test_import_fp4core_leaves_the_tooling_and_triton_unloaded():
    """The runtime import path (api, dispatch, formats, pytorch) does not pull in the CLI, the
    benchmark tooling or the Triton kernels: a server pays only for what it runs."""
    code = ("import sys, fp4core; "
            "print(sorted(m for m in sys.modules if m.startswith(('fp4core.tools', 'fp4core.formats.kernels'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"FP4CORE_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": "/usr/bin:/bin"})
    assert res.stdout.strip() == "[]", res.stdout
