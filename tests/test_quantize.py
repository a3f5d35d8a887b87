"""Quantizers and dequantize against the independent float64 model."""

import math
import struct

import pytest
import torch

import fp4core
from independent import (e2m1_round, e2m1_value, e4m3_round, e4m3_value, e8m0_value, swizzle,
                         unswizzle)


def f32(v: float) -> float:
    """Round to float32 (single +,*,/ done in float64 then rounded are correctly rounded)."""
    return struct.unpack("f", struct.pack("f", v))[0]


def model_nvfp4(x, gs):
    """Per-block recipe from the spec with float32 arithmetic, as the library documents."""
    codes, scales = [], []
    for row in x.tolist():
        crow, srow = [], []
        for j in range(0, len(row), 16):
            blk = row[j:j + 16]
            amax = max(abs(v) for v in blk)
            s = e4m3_round(f32(f32(amax * gs) / 6)) if amax > 0 else 0
            sv = e4m3_value(s)
            srow.append(s)
            mult = f32(gs / sv) if sv > 0 else 0.0
            crow += [e2m1_round(f32(v * mult)) for v in blk]
        codes.append(crow)
        scales.append(srow)
    return codes, scales


def model_mxfp4(x):
    codes, scales = [], []
    for row in x.tolist():
        crow, srow = [], []
        for j in range(0, len(row), 32):
            blk = row[j:j + 32]
            amax = max(abs(v) for v in blk)
            e = math.ceil(math.log2(amax / 6)) if amax > 0 else -127
            b = max(0, min(254, e + 127))
            srow.append(b)
            crow += [e2m1_round(v / e8m0_value(b)) for v in blk]
        codes.append(crow)
        scales.append(srow)
    return codes, scales


def unpacked(fp4):
    return [[c for byte in row for c in (byte & 15, byte >> 4)] for row in fp4.tolist()]


@pytest.mark.parametrize("rows,k", [(1, 16), (7, 48), (129, 64), (3, 4096)])
@pytest.mark.parametrize("layout", ["128x4", "8x4"])
def test_nvfp4_quantize_matches_model(rows, k, layout):
    g = torch.Generator().manual_seed(rows + k)
    # bf16-representable inputs so the library's float32 arithmetic and the model agree
    x = (torch.randn(rows, k, generator=g) * 3).bfloat16()
    gs = fp4core.compute_global_scale(x)
    fp4, sf = fp4core.nvfp4_quantize(x, gs, sfLayout=layout)
    codes, scales = model_nvfp4(x.double(), gs.item())
    assert tuple(fp4.shape) == (rows, k // 2) and fp4.dtype == torch.uint8
    assert unpacked(fp4) == codes
    assert sf.reshape(-1).tolist() == swizzle(scales, layout)


@pytest.mark.parametrize("rows,k", [(1, 32), (7, 96), (129, 64)])
def test_mxfp4_quantize_matches_model(rows, k):
    g = torch.Generator().manual_seed(rows * k)
    x = (torch.randn(rows, k, generator=g) * 10).bfloat16()
    fp4, sf = fp4core.mxfp4_quantize(x)
    codes, scales = model_mxfp4(x.double())
    assert unpacked(fp4) == codes
    assert unswizzle(sf.reshape(-1).tolist(), rows, k // 32, "128x4") == scales


def test_ties_in_nvfp4_quantize_round_to_even():
    # global scale 1 and a block amax of 6 give scale 1, so x / scale hits exact midpoints
    row = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, 0.0]
    fp4, _ = fp4core.nvfp4_quantize(torch.tensor([row]), 1.0, sfLayout="linear")
    assert unpacked(fp4)[0] == [7, 0, 2, 2, 4, 4, 6, 6, 8, 10, 10, 12, 12, 14, 14, 0]


@pytest.mark.parametrize("use_nvfp4", [True, False])
def test_dequantize_is_exact(use_nvfp4):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 64, generator=g)
    if use_nvfp4:
        gs = fp4core.compute_global_scale(x)
        fp4, sf = fp4core.nvfp4_quantize(x, gs)
        codes, scales = model_nvfp4(x.double(), gs.item())
        want = [[e2m1_value(c) * e4m3_value(scales[r][j // 16]) / gs.item() for j, c in enumerate(row)]
                for r, row in enumerate(codes)]
        got = fp4core.dequantize(fp4, sf, gs, dtype=torch.float64)
    else:
        fp4, sf = fp4core.mxfp4_quantize(x)
        codes, scales = model_mxfp4(x.double())
        want = [[e2m1_value(c) * e8m0_value(scales[r][j // 32]) for j, c in enumerate(row)]
                for r, row in enumerate(codes)]
        got = fp4core.dequantize(fp4, sf, use_nvfp4=False, dtype=torch.float64)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-15, atol=0)
    # and the quantization itself is close to the input (4-bit, so ~10% relative)
    rel = (got - x.double()).norm() / x.double().norm()
    assert rel < 0.2


def test_zero_input_quantizes_to_zero():
    fp4, sf = fp4core.nvfp4_quantize(torch.zeros(2, 32), fp4core.compute_global_scale(torch.zeros(2, 32)))
    assert fp4.sum() == 0 and sf.sum() == 0
    assert fp4core.dequantize(fp4, sf).abs().sum() == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_block_gets_nan_scale(bad):
    x = torch.ones(1, 64)
    x[0, 20] = bad
    fp4, sf = fp4core.nvfp4_quantize(x, 1.0, sfLayout="linear")
    assert sf.reshape(-1).tolist() == [e4m3_round(1 / 6), 0x7F, e4m3_round(1 / 6), e4m3_round(1 / 6)]
    deq = fp4core.dequantize(fp4, sf, sfLayout="linear")
    assert deq[0, 16:32].isnan().all() and deq[0, :16].isfinite().all()
    fp4, sf = fp4core.mxfp4_quantize(x, sfLayout="linear")
    assert sf.reshape(-1).tolist() == [255, 125]
    assert fp4core.dequantize(fp4, sf, use_nvfp4=False, sfLayout="linear")[0, :32].isnan().all()


def test_quantize_argument_errors():
    with pytest.raises(ValueError, match="multiple of the block size 16"):
        fp4core.nvfp4_quantize(torch.ones(2, 24), 1.0)
    with pytest.raises(ValueError, match="2-D"):
        fp4core.nvfp4_quantize(torch.ones(16), 1.0)
    with pytest.raises(ValueError, match="do_shuffle"):
        fp4core.nvfp4_quantize(torch.ones(2, 32), 1.0, do_shuffle=True)
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        fp4core.mxfp4_quantize(torch.ones(2, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match="one element"):
        fp4core.nvfp4_quantize(torch.ones(2, 32), torch.ones(2))
