"""Inputs that used to crash deep inside, come back wrong, or disable a backend for good (a
review of the public entry points, 2026-12-07): each is refused up front with the argument
named, or handled as the documented contract says."""

import pytest
import torch

import fp4core
from fp4core.dispatch.selector import selector
from fp4core.formats.quantize import compute_global_scale
from fp4core.pytorch.nn import Fp4Linear, calibrate
from fp4core.testing import first_in_auto, registered


def _operands(m=4, n=8, k=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    gx, gw = compute_global_scale(x), compute_global_scale(w)
    a, a_sf = fp4core.nvfp4_quantize(x, gx)
    b, b_sf = fp4core.nvfp4_quantize(w, gw)
    return a, b, a_sf, b_sf, (1.0 / (gx * gw)).float()


@pytest.mark.parametrize("kind", ["requires_grad", "inference"])
def test_an_out_that_cannot_be_written_in_place_is_refused_and_no_backend_is_left_out(kind):
    a, b, a_sf, b_sf, alpha = _operands()
    if kind == "requires_grad":
        out, match = torch.empty(4, 8, dtype=torch.bfloat16, requires_grad=True), "out: expected a tensor that does not"
    else:
        with torch.inference_mode():
            out = torch.empty(4, 8, dtype=torch.bfloat16)
        match = "out: got an inference tensor"
    failures = dict(selector.failures())
    with pytest.raises(ValueError, match=match):
        fp4core.mm_fp4(a, b.T, a_sf, b_sf.T, alpha, out=out)
    assert selector.failures() == failures, "a refused argument must not leave a backend out of auto"
    y = fp4core.mm_fp4(a, b.T, a_sf, b_sf.T, alpha)  # the next valid call runs
    assert y.shape == (4, 8) and torch.isfinite(y).all()
    with torch.no_grad():  # written in place without autograd: allowed
        if kind == "requires_grad":
            fp4core.mm_fp4(a, b.T, a_sf, b_sf.T, alpha, out=out)
            assert torch.equal(out, y)


@pytest.mark.parametrize("cast", ["half", "bfloat16"])
def test_a_dtype_cast_of_the_model_keeps_the_float32_scales(cast):
    """model.half() used to turn weight_global_scale (2688 / amax of the weight, ~1e4 for small
    weights) into float16 inf and every output into zeros."""
    torch.manual_seed(1)
    lin = torch.nn.Linear(4096, 8, bias=False)
    with torch.no_grad():
        lin.weight.mul_(1e-3)  # a global scale beyond float16's range
    layer = Fp4Linear.from_linear(lin)
    scales = {n: getattr(layer, n).clone() for n in ("weight_global_scale", "input_global_scale", "_static_alpha")}
    dtype = torch.float16 if cast == "half" else torch.bfloat16
    x = torch.randn(3, 4096).to(dtype)
    want = layer(x)
    getattr(layer, cast)()
    for name, value in scales.items():
        got = getattr(layer, name)
        assert got.dtype == torch.float32 and torch.equal(got, value), name
    y = layer(x)
    assert y.dtype == dtype and torch.equal(y, want)
    assert y.abs().sum() > 0


def test_calibration_ignores_inf_as_compute_global_scale_does():
    torch.manual_seed(2)
    layer = Fp4Linear.from_linear(torch.nn.Linear(64, 16, bias=False))
    x = torch.randn(8, 64)
    bad = x.clone()
    bad[0, 0] = float("inf")
    bad[1, 1] = float("nan")
    with calibrate(layer):
        layer(bad)
    assert layer.act_scale == "static"
    assert torch.equal(layer.input_global_scale, compute_global_scale(bad))
    assert torch.isfinite(layer(x)).all() and layer(x).abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
@pytest.mark.parametrize("activations", ["fp4", "bf16"])
def test_fp4linear_refuses_input_dtypes_it_does_not_take(dtype, activations):
    layer = Fp4Linear(64, 16, bias=False, activations=activations)
    x = torch.ones(2, 64).to(dtype)
    with pytest.raises(TypeError, match=f"Fp4Linear: expected a float32, bfloat16 or float16 input, got {dtype}"):
        layer(x)


def test_bad_argument_types_are_named():
    with pytest.raises(TypeError, match="backend: expected a backend name or 'auto', got None"):
        Fp4Linear(64, 16, backend=None)
    x = torch.randn(2, 32)
    for gs in (None, "auto", True):
        with pytest.raises(TypeError, match="nvfp4_quantize: global_scale must be a number or a float32 tensor"):
            fp4core.nvfp4_quantize(x, gs)
    a, sf = fp4core.nvfp4_quantize(x, 3.5)  # numbers are still taken
    assert a.shape == (2, 16)


def test_the_triton_quantizer_names_the_dtypes_it_takes():
    pytest.importorskip("triton")
    from fp4core.formats.kernels import quantize_triton as qt
    with pytest.raises(TypeError, match="take float32, bfloat16 or float16 input, got torch.float64"):
        qt._as_pairs(torch.zeros(2, 32, dtype=torch.float64))
    from fp4core.formats import quantize
    x = torch.randn(2, 32, dtype=torch.float64)
    assert quantize._unit_stride(x).dtype == torch.float32  # what the GPU path hands the kernels


class _Recorder:
    """A top-priority backend that records how the tensors of each call are aligned."""

    seen = []

    @fp4core.hookimpl
    def backend_info(self):
        return first_in_auto("recorder")

    @fp4core.hookimpl
    def supports(self, problem):
        return fp4core.Support.yes()

    @fp4core.hookimpl
    def run(self, problem, operands, tactic, out):
        from fp4core.formats.reference import reference_mm
        self.seen.append([t.data_ptr() % 16 for t in (operands.a, operands.a_scale, operands.b, operands.b_scale, out)])
        out.copy_(reference_mm(problem, operands, torch.float32).to(out.dtype))


def _odd(t: torch.Tensor) -> torch.Tensor:
    """The same values in a contiguous view that starts one byte past an aligned address."""
    base = torch.empty(t.numel() * t.element_size() + t.element_size(), dtype=torch.uint8)
    v = base[t.element_size():].view(t.dtype).view(t.shape)
    return v.copy_(t)


def test_misaligned_views_reach_backends_aligned():
    """A view at an odd offset (a slice of a larger buffer) is valid input; backends get every
    tensor 16-byte aligned (copies), and a misaligned out is written through a copy, so a backend
    that needs alignment never fails on it (under auto it would be left out for good)."""
    a, b, a_sf, b_sf, alpha = _operands(m=5, n=16, k=128, seed=3)
    want = fp4core.mm_fp4(a, b.T, a_sf, b_sf.T, alpha, backend="torch")
    with registered(_Recorder()):
        _Recorder.seen.clear()
        oa, ob, oasf, obsf = _odd(a), _odd(b), _odd(a_sf), _odd(b_sf)
        out = _odd(torch.zeros(5, 16, dtype=torch.bfloat16))
        assert oa.data_ptr() % 16 and out.data_ptr() % 16
        got = fp4core.mm_fp4(oa, ob.T, oasf, obsf.T, alpha, out=out, backend="recorder")
        assert got is out and torch.equal(out, want)
        assert _Recorder.seen == [[0, 0, 0, 0, 0]]
        fp4core.mm_fp4(a, b.T, a_sf, b_sf.T, alpha, backend="recorder")  # aligned: no copies needed
        assert _Recorder.seen[-1] == [0, 0, 0, 0, 0]


def test_a_linear_shared_under_two_names_becomes_one_shared_fp4_layer():
    from fp4core.pytorch.nn import quantize_linears
    torch.manual_seed(4)
    lin = torch.nn.Linear(64, 64, bias=False)
    model = torch.nn.Sequential(lin, torch.nn.ReLU(), lin)
    quantize_linears(model)
    assert isinstance(model[0], Fp4Linear) and model[2] is model[0]
    x = torch.randn(3, 64)
    assert torch.equal(model(x), model[2](torch.relu(model[0](x))))
