"""Scale layouts byte-for-byte against the independent offset formulas."""

import pytest
import torch

from fp4core.formats import layouts
from independent import swizzle, unswizzle

SHAPES = [(1, 1), (7, 3), (129, 1), (129, 3), (1, 256), (7, 256), (128, 4), (200, 9)]


@pytest.mark.parametrize("layout", ["128x4", "8x4"])
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_swizzle_matches_offset_formula(layout, rows, cols):
    g = torch.Generator().manual_seed(rows * 1000 + cols)
    sf = torch.randint(1, 256, (rows, cols), dtype=torch.uint8, generator=g)
    got = layouts.swizzle_scales(sf, layout)
    prow, pcol = layouts.padded_scale_shape(rows, cols, layout)
    assert tuple(got.shape) == (prow, pcol)
    assert got.reshape(-1).tolist() == swizzle(sf.tolist(), layout)
    assert torch.equal(layouts.unswizzle_scales(got, rows, cols, layout), sf)
    # scale_offsets is the formula kernels use
    offs = layouts.scale_offsets(rows, cols, layout)
    assert torch.equal(got.reshape(-1)[offs], sf)


@pytest.mark.parametrize("layout", ["128x4", "8x4"])
def test_unswizzle_reads_transposed_views_in_storage_order(layout):
    sf = torch.randint(0, 256, (129, 3), dtype=torch.uint8)
    swz = layouts.swizzle_scales(sf, layout)
    assert torch.equal(layouts.unswizzle_scales(swz.T, 129, 3, layout), sf)
    assert unswizzle(swz.reshape(-1).tolist(), 129, 3, layout) == sf.tolist()


def test_unswizzle_rejects_wrong_byte_count():
    with pytest.raises(ValueError, match="expected 512 bytes"):
        layouts.unswizzle_scales(torch.zeros(100, dtype=torch.uint8), 7, 3, "128x4")


def test_layout_parse():
    assert layouts.SfLayout.parse("layout_8x4") is layouts.SfLayout.layout_8x4
    assert layouts.SfLayout.parse("128x4") is layouts.SfLayout.layout_128x4
    with pytest.raises(ValueError, match="sf_layout"):
        layouts.SfLayout.parse("64x4")
