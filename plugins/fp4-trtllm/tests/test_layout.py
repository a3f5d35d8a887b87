"""prepare/unprepare on CPU against an independent, index-by-index statement of the layout,
and FlashInfer's trtllm row shuffle undone exactly."""

import pytest
import torch

from fp4core.formats.fp4 import Fp4Format
from fp4core.formats.layouts import SfLayout, round_up, scale_offsets, swizzle_scales, unswizzle_scales
from fp4core.dispatch.synthetic import random_weight

from fp4_trtllm import wordcode
from fp4_trtllm.layout import prepare_weight, unprepare_weight, unshuffle_flashinfer

FORMATS = [Fp4Format.NVFP4, Fp4Format.MXFP4]


def expected_layout(b, b_sf, n, k, fmt):
    """The layout from its definition: destination offset of every source byte."""
    npad, chunks = round_up(n, 256), k // 64
    w = torch.zeros(npad * k // 2, dtype=torch.uint8)
    row = torch.arange(n).unsqueeze(1)
    byte = torch.arange(k // 2).unsqueeze(0)
    r, h, g = row // 16, (row % 16) // 8, row % 8
    c, t, j = byte // 32, (byte % 32) // 8, byte % 8
    lane = g * 4 + t
    piece = ((r // 16) * chunks + c) * 16 + r % 16  # tiles in groups of 16, chunk-major inside
    w[((piece * 32 + lane) * 16 + h * 8 + j).reshape(-1)] = b.reshape(-1)

    cols = k // fmt.block_size
    lin = b_sf.reshape(-1)[scale_offsets(n, cols, SfLayout.layout_128x4)]  # (n, cols)
    blk = torch.arange(cols).unsqueeze(0)
    if fmt is Fp4Format.NVFP4:
        c, t = blk // 4, blk % 4
        dst = ((((r // 16) * chunks + c) * 16 + r % 16) * 32 + g * 4 + t) * 2 + h
        s = torch.zeros(npad // 16 * chunks * 64, dtype=torch.uint8)
    else:
        c, u = blk // 2, blk % 2
        dst = ((((r // 16) * chunks + c) * 16 + r % 16) * 16 + g * 2 + u) * 2 + h
        s = torch.zeros(npad // 16 * chunks * 32, dtype=torch.uint8)
    s[dst.reshape(-1)] = lin.reshape(-1)
    return w, s


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n,k", [(16, 64), (40, 128), (130, 192), (256, 2880), (1, 64), (600, 192)])
def test_prepare_matches_definition_and_round_trips(fmt, n, k):
    if k % fmt.block_size:
        pytest.skip("K not a multiple of the block")
    gen = torch.Generator().manual_seed(n * 1000 + k)
    b, b_sf = random_weight(n, k, fmt, "cpu", gen)
    w, s = prepare_weight(b, b_sf, fmt)
    ew, es = expected_layout(b, b_sf, n, k, fmt)
    # NVFP4 words are re-encoded on top of the byte layout (what the kernel decodes from them
    # is checked code by code in test_kernel_emulation.py)
    assert torch.equal(wordcode.decode(w) if fmt is Fp4Format.NVFP4 else w, ew)
    if fmt is Fp4Format.NVFP4 and torch.any(ew != 0):
        assert not torch.equal(w, ew)
    assert torch.equal(s, es)
    b2, sf2 = unprepare_weight(w, s, n, k, fmt)
    assert torch.equal(b2, b)
    assert torch.equal(sf2.reshape(-1), b_sf.reshape(-1))  # byte for byte, padding included


def test_prepare_rejects_bad_k():
    b, sf = random_weight(16, 96, Fp4Format.NVFP4, "cpu")
    with pytest.raises(ValueError, match="multiple of 64"):
        prepare_weight(b, sf, Fp4Format.NVFP4)


def flashinfer_shuffle_rows(x, epilogue_tile_m=128):
    """FlashInfer's shuffle_matrix_a as its public code states it: row q of each block moves
    to position row_map[q] (srcToDstBlk32RowMap / srcToDstBlk16RowMap)."""
    blk32 = [0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27,
             4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31]
    blk16 = [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]
    row_map = blk32 if epilogue_tile_m % 128 == 0 else blk16
    bs = len(row_map)
    out = torch.empty_like(x)
    for old in range(x.shape[0]):
        out[(old // bs) * bs + row_map[old % bs]] = x[old]
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tile", [128, 64])
def test_unshuffle_flashinfer(fmt, tile):
    n, k = 96, 256
    b, b_sf = random_weight(n, k, fmt, "cpu", torch.Generator().manual_seed(7))
    lin = unswizzle_scales(b_sf, n, k // fmt.block_size)
    shuffled_b = flashinfer_shuffle_rows(b, tile)
    shuffled_sf = swizzle_scales(flashinfer_shuffle_rows(lin, tile), SfLayout.layout_128x4)
    canon, sf = unshuffle_flashinfer(shuffled_b, shuffled_sf.t(), fmt, tile)
    assert torch.equal(canon, b)
    assert torch.equal(sf, b_sf.reshape(-1))
