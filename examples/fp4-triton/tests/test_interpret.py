"""The kernel's arithmetic and indexing in Triton's CPU interpreter (no GPU needed).

Runs where Triton is installed but no CUDA device is visible (a developer's laptop); the
interpreter cannot do bf16 arithmetic, so it checks the NVFP4 (fp16) path only. The GPU
tests cover both formats on hardware.
"""

import dataclasses
import importlib.util
import os

import pytest
import torch

if importlib.util.find_spec("triton") is None or torch.cuda.is_available():
    pytest.skip("needs Triton and no CUDA device (runs the Triton interpreter)", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # before fp4_triton.kernels is imported

import fp4core  # noqa: E402
from fp4core.formats.layouts import padded_scale_shape  # noqa: E402
from fp4core.formats.reference import reference_mm, relative_error  # noqa: E402
from fp4core.testing import canonical_operands, check_backend, guarded_copy, registered  # noqa: E402
from fp4_triton.plugin import TritonBackend  # noqa: E402
from fp4_triton.launch import launch  # noqa: E402
from fp4_triton.tactics import TritonTactic  # noqa: E402

# asm=0: the interpreter cannot run inline PTX (the GPU tests cover asm=1).
BASE = TritonTactic(bm=16, bn=16, bk=64, warps=4, stages=2, split_k=1, group_m=2, swap=0, a16=0, asm=0)


@pytest.mark.parametrize("m, n, k, a8x4, tactic", [
    (5, 48, 64, False, {}),
    (40, 48, 96, True, {"swap": 1}),                     # K tail (96 = 64 + 32), 8x4 A scales
    (40, 48, 128, False, {"group_m": 2}),                # 3 x 3 tiles, grouped order
    (20, 130, 256, False, {"bn": 32, "bk": 128, "split_k": 2, "swap": 1}),
    (7, 33, 512, True, {"split_k": 4}),
    (130, 20, 128, False, {"bm": 32, "bk": 128}),        # rows past one 128-row scale tile
    (130, 20, 128, False, {"bm": 32, "bk": 128, "a16": 1}),   # A dequantized by the pre-pass
    (9, 40, 352, True, {"a16": 1, "split_k": 2}),        # pre-pass with a K tail, 8x4 scales
])
def test_interpreted_kernel_matches_reference(m, n, k, a8x4, tactic):
    p = fp4core.make_problem(m, n, k, use_8x4_sf_layout=a8x4, device="cpu")
    ops = canonical_operands(p, seed=m + n + k)
    ref = reference_mm(p, ops, torch.float64)
    # every operand and the output right before an unreadable page: an access past any of
    # them kills the interpreter with SIGSEGV (pytest reports the crash)
    ops = dataclasses.replace(ops, **{f.name: guarded_copy(getattr(ops, f.name)) for f in dataclasses.fields(ops)
                                      if isinstance(getattr(ops, f.name), torch.Tensor)})
    out = guarded_copy(torch.full((m, n), float("nan"), dtype=torch.bfloat16))
    launch(p, ops, dataclasses.replace(BASE, **tactic), out)
    err = relative_error(out, ref)
    assert err <= 1e-2, f"relative error {err:.3g} for {p.describe()} {tactic}"


class InterpretedTriton(TritonBackend):
    """The same hooks under another name, accepting CPU problems (run by the interpreter)."""

    @fp4core.hookimpl
    def backend_info(self):
        return dataclasses.replace(super().backend_info(), name="triton-interpreted")

    @fp4core.hookimpl
    def supports(self, problem):
        if problem.device.type != "cpu" or problem.fmt is not fp4core.Fp4Format.NVFP4:
            return fp4core.Support.no("interpreter test: NVFP4 on the CPU only")
        return fp4core.Support.yes()

    @fp4core.hookimpl
    def tactics(self, problem):
        return [dataclasses.replace(BASE, bm=32, bn=32), dataclasses.replace(BASE, swap=1, split_k=2),
                dataclasses.replace(BASE, a16=1, bk=128)]


def test_check_backend_through_the_public_helpers():
    # registered() + check_backend(): the path a plugin's GPU tests take, here on the CPU.
    with registered(InterpretedTriton()):
        results = check_backend("triton-interpreted", fp4core.make_problem(37, 70, 256, device="cpu"))
        assert len(results) == 3 and all(r.error <= 1e-2 for r in results)
        p = fp4core.make_problem(5, 64, 128, device="cpu")
        out = fp4core.mm_fp4(*_flashinfer_args(p), backend="triton-interpreted")
        assert out.shape == (5, 64)
    assert "triton-interpreted" not in {s.name for s in fp4core.backends()}


def _flashinfer_args(p):
    """Canonical operands turned back into mm_fp4's FlashInfer-style arguments."""
    ops = canonical_operands(p, seed=1)
    b_sf = ops.b_scale.reshape(padded_scale_shape(p.n, p.k // p.block_size, "128x4"))
    return ops.a, ops.b.T, ops.a_scale, b_sf.T, ops.alpha, p.out_dtype


@pytest.mark.parametrize("m, n, k, tactic", [
    (5, 48, 64, {}),
    (40, 48, 96, {"swap": 1}),                                   # K tail
    (20, 130, 256, {"bn": 32, "bk": 128, "split_k": 2, "swap": 1}),
    (7, 33, 512, {"split_k": 4, "a16": 1}),                      # a16 does not apply to W4A16
])
def test_interpreted_weight_only_kernel_matches_reference(m, n, k, tactic):
    """W4A16 (A_PLAIN): fp16 activations in natural K order (the interpreter has no bf16
    arithmetic; the bf16 cast of the weight runs on GPUs only), NVFP4 weight."""
    p = fp4core.make_problem(m, n, k, device="cpu", act_dtype=torch.float16)
    ops = canonical_operands(p, seed=m + n + k)
    assert ops.a.dtype == torch.float16 and ops.a_scale is None
    ref = reference_mm(p, ops, torch.float64)
    ops = dataclasses.replace(ops, **{f.name: guarded_copy(getattr(ops, f.name)) for f in dataclasses.fields(ops)
                                      if isinstance(getattr(ops, f.name), torch.Tensor)})
    out = guarded_copy(torch.full((m, n), float("nan"), dtype=torch.float16))
    launch(p, ops, dataclasses.replace(BASE, **tactic), out)
    err = relative_error(out, ref)
    assert err <= 1e-2, f"relative error {err:.3g} for {p.describe()} {tactic}"
