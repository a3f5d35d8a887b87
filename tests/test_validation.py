"""Every argument error of mm_fp4 names the argument, what was expected and what was given."""

import pytest
import torch

import fp4core


@pytest.fixture
def args():
    x, w = torch.randn(7, 64), torch.randn(20, 64)
    gx, gw = fp4core.compute_global_scale(x), fp4core.compute_global_scale(w)
    a, asf = fp4core.nvfp4_quantize(x, gx)
    b, bsf = fp4core.nvfp4_quantize(w, gw)
    return dict(a=a, b=b.T, a_descale=asf, b_descale=bsf.T, alpha=(1 / (gx * gw)).float())


def call(args, **over):
    kw = {**args, **over}
    return fp4core.mm_fp4(kw.pop("a"), kw.pop("b"), kw.pop("a_descale"), kw.pop("b_descale"), **kw)


CASES = [
    (dict(a="a_tensor"), TypeError, r"a: expected a torch.Tensor"),
    (dict(a=torch.zeros(7, 32, dtype=torch.float16)), ValueError, r"a: expected packed FP4 as uint8 .* got torch.float16"),
    (dict(a=torch.zeros(2, 7, 32, dtype=torch.uint8)), ValueError, r"a: expected a 2-D tensor .* got shape \(2, 7, 32\)"),
    (dict(a=torch.zeros(32, 7, dtype=torch.uint8).T), ValueError, r"a: expected a row-major contiguous"),
    (dict(a=torch.zeros(7, 16, dtype=torch.uint8)), ValueError, r"b: K mismatch: a has K/2 = 16 .* b.shape\[0\] = 32"),
    (dict(b="b"), TypeError, r"b: expected a torch.Tensor"),
    (dict(b=torch.zeros(32, 20, dtype=torch.uint8)), ValueError, r"b: expected a column-major \(K/2, N\) view"),
    (dict(block_size=32), ValueError, r"block_size: nvfp4 uses block_size=16, got 32"),
    (dict(use_nvfp4=False), ValueError, r"block_size: mxfp4 uses block_size=32, got 16"),
    (dict(out_dtype=torch.float32), ValueError, r"out_dtype: expected torch.bfloat16 or torch.float16, got torch.float32"),
    (dict(a_descale=torch.zeros(100, dtype=torch.uint8)), ValueError,
     r"a_descale: expected 512 scale bytes for a \(7 rows x 4 blocks, padded to 128x4 in the 128x4 layout\), got shape \(100,\)"),
    (dict(a_descale=torch.zeros(512, dtype=torch.float16)), ValueError, r"a_descale: nvfp4 scales \(E4M3\) must be one of"),
    (dict(b_descale=torch.zeros(4, 100, dtype=torch.uint8)), ValueError, r"b_descale: expected 512 scale bytes for b \(20 rows"),
    (dict(b_descale=torch.zeros(8, 128, dtype=torch.uint8)[::2]), ValueError, r"b_descale: scale tensor must be contiguous"),
    (dict(use_8x4_sf_layout=True), ValueError, r"a_descale: expected 32 scale bytes .* in the 8x4 layout"),
    (dict(alpha=1.0), TypeError, r"alpha: expected None or a float32 tensor"),
    (dict(alpha=torch.ones(2)), ValueError, r"alpha: expected a float32 tensor with one element, got torch.float32 with shape \(2,\)"),
    (dict(alpha=torch.ones(1, dtype=torch.float64)), ValueError, r"alpha: expected a float32 tensor"),
    (dict(out=torch.empty(7, 21, dtype=torch.bfloat16)), ValueError, r"out: expected shape \(7, 20\), got \(7, 21\)"),
    (dict(out=torch.empty(7, 20, dtype=torch.float16)), ValueError, r"out: expected dtype torch.bfloat16 \(out_dtype\), got torch.float16"),
    (dict(out=torch.empty(20, 7, dtype=torch.bfloat16).T), ValueError, r"out: expected a contiguous tensor"),
    (dict(out="x"), TypeError, r"out: expected None or a torch.Tensor"),
    (dict(backend=3), TypeError, r"backend: expected 'auto' or a backend name"),
]


@pytest.mark.parametrize("over,exc,pattern", CASES, ids=[c[2][:40] for c in CASES])
def test_argument_errors(args, over, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(args, **over)


def test_k_not_multiple_of_block(args):
    a = torch.zeros(7, 12, dtype=torch.uint8)  # K = 24
    with pytest.raises(ValueError, match=r"a: K = 2 \* a.shape\[1\] = 24 must be a multiple of the nvfp4 block size 16"):
        call(args, a=a)


def test_mxfp4_rejects_e4m3_scales(args):
    a = torch.zeros(7, 32, dtype=torch.uint8)
    sf = torch.zeros(128, 4, dtype=torch.float8_e4m3fn)
    b = torch.zeros(20, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"a_descale: mxfp4 scales \(E8M0\) must be one of \[.*'uint8'\], got torch.float8_e4m3fn"):
        fp4core.mm_fp4(a, b.T, sf, sf.T, None, block_size=32, use_nvfp4=False)


def test_device_mismatch_is_named(args, monkeypatch):
    meta = torch.zeros(512, dtype=torch.uint8, device="meta")
    with pytest.raises(ValueError, match=r"a_descale: expected a tensor on cpu \(where a is\), got meta"):
        call(args, a_descale=meta)
    with pytest.raises(ValueError, match=r"alpha: expected a tensor on cpu"):
        call(args, alpha=torch.ones(1, device="meta"))


def test_backend_errors(args, monkeypatch):
    from fp4core.dispatch.registry import KNOWN_PACKAGES

    monkeypatch.setitem(KNOWN_PACKAGES, "fancy", "fp4-fancy")
    with pytest.raises(fp4core.BackendNotInstalledError, match=r"backend 'fancy' is not installed: pip install fp4-fancy"):
        call(args, backend="fancy")
    with pytest.raises(fp4core.BackendNotInstalledError, match=r"'nosuch' is not installed \(no package"):
        call(args, backend="nosuch")


def test_skip_check_still_computes(args):
    want = call(args)
    assert torch.equal(call(args, skip_check=True), want)
