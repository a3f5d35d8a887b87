"""Compile-only checks (no GPU needed): every CUDA source of the plugin builds for each of its
architectures with the local nvcc and the nvidia-cutlass headers, through the plugin's ``build``
hook and ``fp4core build`` (the JIT cache makes re-runs cheap). Skipped cleanly without nvcc or
without the CUTLASS headers. The Blackwell objects are compile-only: not verified on hardware."""

import concurrent.futures

import pytest

import fp4core
from fp4core.kit import jit
from fp4core.testing import global_access_before_pdl_wait

from fp4_cutlass import blackwell, launcher
from fp4_cutlass.plugin import CutlassBackend

needs_toolchain = pytest.mark.skipif(
    jit.nvcc_path() is None or jit.cutlass_include_dir() is None,
    reason="needs nvcc and the nvidia-cutlass headers")


@needs_toolchain
def test_every_source_compiles_for_its_arch():
    be = CutlassBackend()
    archs = ["sm_90a", "sm_100a", "sm_120a"]
    # Two CI cores: build the three libraries side by side (each is one nvcc process).
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        lines = [line for arch_lines in pool.map(lambda a: be.build([a], False), archs) for line in arch_lines]
    assert any(line.startswith("sm_90a:") and line.endswith(".so") for line in lines), lines
    for n in ("100a", "120a"):
        hit = [line for line in lines if line.startswith(f"sm_{n}:")]
        assert len(hit) == 1 and "not verified on hardware" in hit[0], lines
    # The SM90 library exports the C entry points the launcher binds (checked without a GPU).
    path = launcher.build_sm90(progress=False)
    data = path.read_bytes()
    for sym in (b"fp4c_sm90_gemm", b"fp4c_abi_version", b"fp4c_params_size", b"fp4c_error_string"):
        assert sym in data, sym


@needs_toolchain
def test_fp4core_build_calls_the_hook():
    results = fp4core.build(["cutlass"], ["sm_90a"], progress=False)
    assert list(results) == ["cutlass"] and results["cutlass"][0].startswith("sm_90a:")


def test_build_skips_unknown_archs():
    assert CutlassBackend().build(["sm_80", "sm_89"], False) == []


def test_blackwell_arch_names():
    with pytest.raises(ValueError, match="sm_100a, sm_120a"):
        blackwell.build("sm_90a")


@needs_toolchain
def test_nothing_is_read_before_the_pdl_wait_but_the_gemm_weight_copies():
    """Programmatic dependent launch: the pre-passes and the split-K reduce touch no global
    memory before griddepcontrol.wait; the GEMM issues only its bulk/TMA copies there (the
    weight and its scales: its kernel ahead is always its own pre-pass, which triggers after
    its own wait; fp4core/pdl.cuh), no plain load or store (sm_90a PTX, program order)."""
    ptx = jit.build("fp4_cutlass_pdl_check", [launcher.SM90_SOURCE], arch="sm_90a", flags=list(launcher.FLAGS),
                    include_dirs=launcher.include_dirs(), kind="ptx", progress=False).read_text()
    prepasses = ("act_dequant", "act_permute", "splitk_reduce")
    strict = global_access_before_pdl_wait(ptx)
    plain = global_access_before_pdl_wait(ptx, plain_only=True)
    kinds = {"prepass": 0, "reduce": 0, "gemm": 0}
    for name, lines in strict.items():
        assert lines is not None, f"{name}: no griddepcontrol.wait"
        if any(k in name for k in prepasses):
            kinds["reduce" if "reduce" in name else "prepass"] += 1
        else:
            kinds["gemm"] += 1
            lines = plain[name]  # its bulk/TMA weight copies may come first
        assert not lines, f"{name}: global memory touched before the PDL wait: {lines[:3]}"
    assert all(kinds.values()), kinds
