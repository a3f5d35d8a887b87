"""The weight layout the fp4-trtllm kernel streams, made by ``prepare`` (pure torch, CPU or CUDA).

Canonical input: ``b`` uint8 (N, K/2) row-major packed E2M1 and ``b_scale``, the (N, K/block)
scale bytes in the 128x4 layout. Output: two flat uint8 tensors of pieces, one piece per
(weight tile r = 16 rows, K chunk c = 64 values), ordered by (tile group G = r / 16, chunk c,
tile r % 16): piece index ((G * chunks + c) * 16 + r % 16). A CTA whose 16 tiles are one
group therefore reads one contiguous run of 16 pieces per chunk and one contiguous range
for its whole K split: on the H200 a read of that shape streams at ~94 % of the copy rate,
where 16 streams of single 512-byte pieces per CTA reached ~70 % (benchmarks/bulk_probe.cu,
benchmarks/stream_probe.cu).

* weight: 512 bytes per piece. Lane L = 4g + t (g = 0..7, t = 0..3) of the warp owning tile r
  reads 16 bytes at 16L: bytes 8h + j (h = 0, 1; j = 0..7) are byte 32c + 8t + j of row
  16r + 8h + g. One coalesced 16-byte load gives a lane its 16 values of rows g and g+8.
* scales: NVFP4 64 bytes per piece: byte 2L + h is the scale of row 16r + 8h + g, block
  4c + t. MXFP4 32 bytes per piece: byte 2(2g + u) + h is row 16r + 8h + g, block 2c + u
  (u = t / 2; lanes 2u and 2u+1 of a row share a 32-value block).

NVFP4 weights are then re-encoded word by word (``wordcode.encode``: every aligned 4 bytes, a
fixed invertible bit map) so the kernel's decode is 4-5 shifts and 4 LOP3s; the code ("f16" for
FP4 activations, "bf16" for weight-only calls) is the caller's choice and must be passed again
to ``unprepare_weight``. MXFP4 bytes stay as they are. N is padded with zero rows to whole tile
groups (a multiple of 256); K must be a multiple of 64. Both steps lose nothing: ``unprepare`` restores the canonical bytes exactly
(the 128x4 padding bytes come back as zeros, which is what the quantizers write).
"""

from __future__ import annotations

import torch

from fp4core.formats.fp4 import Fp4Format, as_bytes
from fp4core.formats.layouts import SfLayout, flat_scale_bytes, round_up, swizzle_scales, unswizzle_scales

from . import wordcode

TILE_ROWS = 16
#: Tiles per group: the pieces of a group's tiles for one chunk are contiguous.
TILE_GROUP = 16
CHUNK_K = 64


def _check(n: int, k: int) -> None:
    if k % CHUNK_K:
        raise ValueError(f"fp4-trtllm needs K to be a multiple of {CHUNK_K}, got K = {k}")
    if n < 1:
        raise ValueError(f"N must be >= 1, got {n}")


def _sf_blocks_per_chunk(fmt: Fp4Format) -> int:
    return CHUNK_K // fmt.block_size  # 4 for NVFP4, 2 for MXFP4


def prepare_weight(b: torch.Tensor, b_scale: torch.Tensor, fmt: Fp4Format, code: str = "f16"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical weight -> (weight bytes, scale bytes) in the kernel's layout.

    Args:
        b: uint8 (N, K/2) row-major packed E2M1 (any one-byte dtype is viewed as uint8).
        b_scale: the weight's scale bytes in the 128x4 layout (flat or 2-D, as stored).
        fmt: NVFP4 or MXFP4.
        code: the NVFP4 word code, "f16" (FP4 activations) or "bf16" (weight-only calls,
            bf16 or fp16 activations); see ``wordcode``. Ignored for MXFP4.
    Returns:
        (uint8 1-D of round_up(N, 256) * K/2 bytes, uint8 1-D of round_up(N, 256) * K/block
        bytes), on ``b``'s device, laid out (and for NVFP4 word-encoded) as the module
        docstring says.
    """
    b = as_bytes(b)
    n, k = b.shape[0], b.shape[1] * 2
    _check(n, k)
    word_code = wordcode.code_named(code)
    npad, chunks = round_up(n, TILE_ROWS * TILE_GROUP), k // CHUNK_K
    groups = npad // (TILE_ROWS * TILE_GROUP)
    rows = torch.zeros((npad, k // 2), dtype=torch.uint8, device=b.device)
    rows[:n] = b
    # (G, r, h, g, c, t, j) -> (G, c, r, g, t, h, j)
    w = rows.view(groups, TILE_GROUP, 2, 8, chunks, 4, 8).permute(0, 4, 1, 3, 5, 2, 6).reshape(-1)
    if fmt is Fp4Format.NVFP4:
        w = wordcode.encode(w, word_code)  # each word is 8 codes of one row: 4 aligned bytes of j

    spc = _sf_blocks_per_chunk(fmt)
    lin = unswizzle_scales(b_scale, n, k // fmt.block_size, SfLayout.layout_128x4)
    sf = torch.zeros((npad, k // fmt.block_size), dtype=torch.uint8, device=b.device)
    sf[:n] = lin
    # NVFP4 (G, r, h, g, c, t) -> (G, c, r, g, t, h); MXFP4 the same with u = t / 2 for t.
    s = sf.view(groups, TILE_GROUP, 2, 8, chunks, spc).permute(0, 4, 1, 3, 5, 2).reshape(-1)
    return w.contiguous(), s.contiguous()


def unprepare_weight(w: torch.Tensor, s: torch.Tensor, n: int, k: int, fmt: Fp4Format,
                     code: str = "f16") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inverse of ``prepare_weight``.

    Args:
        w, s: the two tensors ``prepare_weight`` returned.
        n, k: the weight's shape in elements.
        fmt: NVFP4 or MXFP4.
        code: the word code ``prepare_weight`` was given.
    Returns:
        (b uint8 (N, K/2) row-major, b_scale uint8 (round_up(N, 128), round_up(K/block, 4))
        in the 128x4 layout).
    """
    _check(n, k)
    npad, chunks = round_up(n, TILE_ROWS * TILE_GROUP), k // CHUNK_K
    groups = npad // (TILE_ROWS * TILE_GROUP)
    spc = _sf_blocks_per_chunk(fmt)
    if w.numel() != npad * k // 2 or s.numel() != npad * chunks * spc:
        raise ValueError(f"unprepare_weight: sizes {w.numel()}, {s.numel()} do not match "
                         f"N={n}, K={k}, {fmt.value}")
    if fmt is Fp4Format.NVFP4:
        w = wordcode.decode(w.reshape(-1), wordcode.code_named(code))
    # (G, c, r, g, t, h, j) -> (G, r, h, g, c, t, j)
    rows = w.reshape(groups, chunks, TILE_GROUP, 8, 4, 2, 8).permute(0, 2, 5, 3, 1, 4, 6).reshape(npad, k // 2)
    # (G, c, r, g, t, h) -> (G, r, h, g, c, t)
    sf = s.reshape(groups, chunks, TILE_GROUP, 8, spc, 2).permute(0, 2, 5, 3, 1, 4).reshape(npad, k // fmt.block_size)
    return rows[:n].contiguous(), swizzle_scales(sf[:n], SfLayout.layout_128x4)


# -- FlashInfer's trtllm weight shuffle (shuffle_matrix_a / shuffle_matrix_sf_a) ---------------
def flashinfer_shuffle_block(epilogue_tile_m: int = 128) -> int:
    """Rows per shuffle block: 32 when the epilogue tile is a multiple of 128, else 16."""
    return 32 if epilogue_tile_m % 128 == 0 else 16


def flashinfer_row_map(n: int, epilogue_tile_m: int = 128, device=None) -> torch.Tensor:
    """int64 (n,): row i of the shuffled matrix is row ``map[i]`` of the original.

    FlashInfer's ``shuffle_matrix_a`` moves row q of each block of B rows (B = 16 or 32) to
    position (q % (B/8)) * 8 + q // (B/8) of that block (its srcToDstBlk{16,32}RowMap).
    """
    blk = flashinfer_shuffle_block(epilogue_tile_m)
    if n % blk:
        raise ValueError(f"FlashInfer-shuffled weights have N a multiple of {blk}, got N = {n}")
    q = torch.arange(blk)
    dst = (q % (blk // 8)) * 8 + q // (blk // 8)
    inv = torch.empty_like(q)
    inv[dst] = q
    base = torch.arange(0, n, blk).unsqueeze(1)
    return (base + inv.unsqueeze(0)).reshape(-1).to(device)


def unshuffle_flashinfer(b: torch.Tensor, b_scale: torch.Tensor, fmt: Fp4Format,
                         epilogue_tile_m: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashInfer trtllm-shuffled weight -> canonical (b (N, K/2), flat 128x4 scale bytes).

    Args:
        b: uint8 (N, K/2) rows after ``shuffle_matrix_a`` (pass the row-major tensor, i.e.
            the ``.T`` of what ``mm_fp4`` takes).
        b_scale: scales after ``shuffle_matrix_sf_a``: the linear scales row-shuffled the
            same way, then 128x4-swizzled (flat, 2-D, or its transpose).
    """
    b = as_bytes(b)
    n, k = b.shape[0], b.shape[1] * 2
    rmap = flashinfer_row_map(n, epilogue_tile_m, b.device)
    canon = torch.empty_like(b)
    canon[rmap] = b
    lin = unswizzle_scales(flat_scale_bytes(b_scale), n, k // fmt.block_size, SfLayout.layout_128x4)
    sf = torch.empty_like(lin)
    sf[rmap] = lin
    return canon, swizzle_scales(sf, SfLayout.layout_128x4).reshape(-1)
