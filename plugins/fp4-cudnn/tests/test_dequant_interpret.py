"""The dequantization kernel's arithmetic and indexing on the CPU, through Triton's interpreter.

The GPU tests (test_gpu.py) run the compiled kernel; these run the same Triton source with
``TRITON_INTERPRET=1`` so CI, which has no GPU, checks every E2M1 code against every scale
byte bit for bit. Skipped where Triton is not installed, and where a GPU is present (the GPU
tests cover it there).
"""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

_SCRIPT = r"""
import torch
from fp4core.formats.fp4 import Fp4Format
from fp4core.formats.layouts import SfLayout, padded_scale_shape, scale_offsets
from fp4core.formats.quantize import dequantize
from fp4_cudnn.dequant import dequantize_pair

g = torch.Generator().manual_seed(3)

def scales(rows, k, fmt, layout, nan=False):
    cols = k // fmt.block_size
    prow, pcol = padded_scale_shape(rows, cols, layout)
    if fmt is Fp4Format.NVFP4:  # every E4M3 byte, signs and subnormals included
        vals = torch.randint(0, 256, (rows, cols), dtype=torch.uint8, generator=g)
        if not nan:
            vals = torch.where((vals & 0x7F) == 0x7F, torch.full_like(vals, 0x38), vals)
    else:  # E8M0 2^-127 .. 2^127 (bytes 0..2 are fp32 subnormals, large ones overflow to inf)
        vals = torch.randint(0, 256 if nan else 255, (rows, cols), dtype=torch.uint8, generator=g)
    flat = torch.zeros(prow * pcol, dtype=torch.uint8)
    flat[scale_offsets(rows, cols, layout, "cpu").reshape(-1)] = vals.reshape(-1)
    return flat

def same(out, ref):
    # bit for bit, except that any NaN matches any NaN
    both_nan = torch.isnan(out) & torch.isnan(ref)
    return torch.equal(torch.where(both_nan, 0, out.view(torch.int16)),
                       torch.where(both_nan, 0, ref.view(torch.int16)))

cases = [(1, 8, 64), (7, 40, 320), (32, 64, 512), (33, 136, 1024)]
configs = [None, {"BR": 16, "KBYTES": 64, "VB": 8, "num_warps": 4},
           {"BR": 8, "KBYTES": 128, "VB": 16, "num_warps": 4}]
for fmt in Fp4Format:
    for layout in (SfLayout.layout_128x4, SfLayout.layout_8x4):
        for (ra, rb, k) in cases:
            for cfg in configs:
                if cfg and (fmt.block_size // 2) % cfg["VB"]:
                    continue
                a = torch.randint(0, 256, (ra, k // 2), dtype=torch.uint8, generator=g)
                b = torch.randint(0, 256, (rb, k // 2), dtype=torch.uint8, generator=g)
                nan = ra == 33
                asf, bsf = scales(ra, k, fmt, layout, nan), scales(rb, k, fmt, SfLayout.layout_128x4, nan)
                ao = torch.full((ra, k), float("nan"), dtype=torch.bfloat16)
                bo = torch.full((rb, k), float("nan"), dtype=torch.bfloat16)
                dequantize_pair(a, asf, ao, layout, b, bsf, bo, fmt, config=cfg)
                nv = fmt is Fp4Format.NVFP4
                ra_ = dequantize(a, asf, use_nvfp4=nv, sfLayout=layout, dtype=torch.bfloat16)
                rb_ = dequantize(b, bsf, use_nvfp4=nv, sfLayout=SfLayout.layout_128x4, dtype=torch.bfloat16)
                assert same(ao, ra_), (fmt, layout, ra, k, cfg, (ao.view(torch.int16) != ra_.view(torch.int16)).nonzero()[:4])
                assert same(bo, rb_), (fmt, layout, rb, k, cfg)
# every operand right before an unreadable page: an access past any of them is a SIGSEGV.
# K = 2880 leaves the last K tile part-filled; there a scale-column bound that was too
# loose read up to 1.5 KB past the last row tile's scales (memcheck on the H200, issue 16)
from fp4core.testing import guarded_copy
for fmt in Fp4Format:
    for layout in (SfLayout.layout_128x4, SfLayout.layout_8x4):
        ra, rb, k = 40, 24, 2880
        a = guarded_copy(torch.randint(0, 256, (ra, k // 2), dtype=torch.uint8, generator=g))
        b = guarded_copy(torch.randint(0, 256, (rb, k // 2), dtype=torch.uint8, generator=g))
        asf = guarded_copy(scales(ra, k, fmt, layout))
        bsf = guarded_copy(scales(rb, k, fmt, SfLayout.layout_128x4))
        ao = guarded_copy(torch.full((ra, k), float("nan"), dtype=torch.bfloat16))
        bo = guarded_copy(torch.full((rb, k), float("nan"), dtype=torch.bfloat16))
        dequantize_pair(a, asf, ao, layout, b, bsf, bo, fmt)
        nv = fmt is Fp4Format.NVFP4
        assert same(ao, dequantize(a, asf, use_nvfp4=nv, sfLayout=layout, dtype=torch.bfloat16)), (fmt, layout)
        assert same(bo, dequantize(b, bsf, use_nvfp4=nv, sfLayout=SfLayout.layout_128x4, dtype=torch.bfloat16))
print("dequant interpreter: all equal")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None or torch.cuda.is_available(),
                    reason="needs triton; with a GPU the GPU tests run the compiled kernel")
def test_dequant_kernel_byte_exact_in_the_triton_interpreter():
    """Every code x scale byte (NaN scales in some cases), both formats and A-scale layouts,
    full and partial tiles, three tile configurations: equal to ``fp4core.dequantize`` in bf16;
    and no access past any operand (each placed before an unreadable page)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "all equal" in res.stdout


def test_dequant_rejects_a_vector_wider_than_a_scale_block():
    """VB must divide the format's scale block; a wider vector would share one scale between
    two blocks, so it is refused with the reason instead of computing wrong values."""
    from fp4core.formats.fp4 import Fp4Format
    from fp4core.formats.layouts import SfLayout
    from fp4_cudnn.dequant import dequantize_pair

    b = torch.zeros(8, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="VB=16 must divide"):
        dequantize_pair(None, None, None, SfLayout.layout_128x4, b, torch.zeros(512, dtype=torch.uint8),
                        torch.empty(8, 64, dtype=torch.bfloat16), Fp4Format.NVFP4,
                        config={"BR": 8, "KBYTES": 64, "VB": 16, "num_warps": 4})
