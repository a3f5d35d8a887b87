"""mm_fp4 through the torch backend (and auto) against an independent float64 reference."""

import pytest
import torch

import fp4core
from independent import dequant_matrix, e4m3_value, e8m0_value, matmul_t, unswizzle

# the CUDA cases carry the gpu marker, so the device runs (-m gpu) include them
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def quantized_pair(m, n, k, use_nvfp4, layout, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(device)
    w = torch.randn(n, k, generator=g).to(device)
    if use_nvfp4:
        gx, gw = fp4core.compute_global_scale(x), fp4core.compute_global_scale(w)
        a, asf = fp4core.nvfp4_quantize(x, gx, sfLayout=layout)
        b, bsf = fp4core.nvfp4_quantize(w, gw)
        alpha = (1.0 / (gx * gw)).float()
    else:
        a, asf = fp4core.mxfp4_quantize(x, sfLayout=layout)
        b, bsf = fp4core.mxfp4_quantize(w)
        alpha = None
    return a, asf, b, bsf, alpha


def independent_reference(a, asf, b, bsf, alpha, use_nvfp4, layout):
    block = 16 if use_nvfp4 else 32
    value = e4m3_value if use_nvfp4 else e8m0_value
    m, n, k = a.shape[0], b.shape[0], a.shape[1] * 2
    sa = unswizzle(asf.cpu().reshape(-1).tolist(), m, k // block, layout)
    sb = unswizzle(bsf.cpu().reshape(-1).tolist(), n, k // block, "128x4")
    da = dequant_matrix(a.cpu().tolist(), sa, block, value)
    db = dequant_matrix(b.cpu().tolist(), sb, block, value)
    ref = torch.tensor(matmul_t(da, db), dtype=torch.float64)
    return ref * (alpha.item() if alpha is not None else 1.0)


def rel_err(out, ref):
    assert torch.isfinite(out).all(), "output has NaN/Inf (unwritten elements?)"
    return ((out.double().cpu() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_nvfp4", [True, False])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["128x4", "8x4"])
@pytest.mark.parametrize("m,n,k", [(1, 8, 64), (7, 33, 128), (129, 5, 64)])
def test_torch_backend_matches_reference(device, use_nvfp4, out_dtype, layout, m, n, k):
    a, asf, b, bsf, alpha = quantized_pair(m, n, k, use_nvfp4, layout, device, seed=m * n + k)
    out = torch.full((m, n), float("nan"), dtype=out_dtype, device=device)
    res = fp4core.mm_fp4(a, b.T, asf, bsf.T, alpha, out_dtype, out, block_size=16 if use_nvfp4 else 32,
                         use_8x4_sf_layout=(layout == "8x4"), backend="torch", use_nvfp4=use_nvfp4)
    assert res is out
    assert rel_err(out, independent_reference(a, asf, b, bsf, alpha, use_nvfp4, layout)) <= 1e-2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_alpha", [True, False])
def test_auto_allocates_output_and_honours_alpha(device, with_alpha):
    a, asf, b, bsf, alpha = quantized_pair(5, 24, 96, True, "128x4", device, seed=3)
    alpha = alpha if with_alpha else None
    out = fp4core.mm_fp4(a, b.T, asf, bsf.T, alpha)
    assert out.shape == (5, 24) and out.dtype == torch.bfloat16 and out.device.type == device
    assert rel_err(out, independent_reference(a, asf, b, bsf, alpha, True, "128x4")) <= 1e-2


def test_accepts_native_fp4_and_fp8_dtypes():
    if not hasattr(torch, "float4_e2m1fn_x2"):
        pytest.skip("torch has no float4_e2m1fn_x2")
    a, asf, b, bsf, alpha = quantized_pair(3, 16, 64, True, "128x4", "cpu", seed=4)
    want = fp4core.mm_fp4(a, b.T, asf, bsf.T, alpha)
    got = fp4core.mm_fp4(a.view(torch.float4_e2m1fn_x2), b.view(torch.float4_e2m1fn_x2).T,
                         asf.view(torch.float8_e4m3fn), bsf.view(torch.float8_e4m3fn).T, alpha)
    assert torch.equal(want, got)


def test_prepared_weight_gives_the_same_result():
    a, asf, b, bsf, alpha = quantized_pair(9, 40, 128, True, "128x4", "cpu", seed=6)
    w = fp4core.prepare(b.T, bsf.T)
    assert w.shape == (40, 128)
    want = fp4core.mm_fp4(a, b.T, asf, bsf.T, alpha)
    assert torch.equal(fp4core.mm_fp4(a, w, asf, None, alpha), want)
    with pytest.raises(ValueError, match="b_descale: must be None"):
        fp4core.mm_fp4(a, w, asf, bsf.T, alpha)
    with pytest.raises(ValueError, match="holds nvfp4"):
        fp4core.mm_fp4(a, w, asf, None, None, block_size=32, use_nvfp4=False)


def test_empty_m_returns_empty_output():
    _, _, b, bsf, alpha = quantized_pair(1, 8, 64, True, "128x4", "cpu", seed=7)
    a, asf = fp4core.nvfp4_quantize(torch.zeros(0, 64), 1.0)
    out = fp4core.mm_fp4(a, b.T, asf, bsf.T, alpha)
    assert out.shape == (0, 8)


@pytest.mark.gpu
def test_torch_backend_large_shape_on_gpu():
    from fp4core.formats.reference import reference_mm, relative_error
    from fp4core.testing import canonical_operands

    problem = fp4core.make_problem(256, 4096, 4096, device="cuda")
    ops = canonical_operands(problem, seed=11)
    out = torch.full((256, 4096), float("nan"), dtype=torch.bfloat16, device="cuda")
    fp4core.mm_fp4(ops.a, ops.b.T, ops.a_scale, ops.b_scale, ops.alpha, out=out, backend="torch")
    assert relative_error(out, reference_mm(problem, ops)) <= 1e-2


def test_device_info_describes_the_device():
    cpu = fp4core.dispatch.problem.device_info("cpu")
    assert cpu.capability is None and cpu.sm == 0 and cpu.sm_count is None


@pytest.mark.gpu
def test_device_info_counts_sms_on_cuda():
    info = fp4core.dispatch.problem.device_info("cuda")
    props = torch.cuda.get_device_properties(info.index)
    assert info.capability == (props.major, props.minor)
    assert info.sm_count == props.multi_processor_count > 0
