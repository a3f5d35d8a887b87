"""Scale-factor layouts: linear, 128x4 (the tensor-core layout) and 8x4.

A scale matrix has one byte per (row, block of K). Swizzled layouts pad the rows to a
multiple of the tile height (128 or 8) and the scale columns to a multiple of 4, then store
tiles one after another, running along the scale columns first:

* 128x4: byte (r, c) sits in tile (r // 128, c // 4) at offset
  (r % 32) * 16 + ((r // 32) % 4) * 4 + (c % 4). This is what cuBLAS, cuDNN, CUTLASS and
  FlashInfer's ``block_scale_interleave`` use.
* 8x4: byte (r, c) sits in tile (r // 8, c // 4) at offset (r % 8) * 4 + (c % 4). TensorRT-LLM
  uses it for the activation scales of its small-M kernels.

Padding bytes are zero. Swizzled tensors are returned 2-D as (padded_rows, padded_cols) in
memory order; what matters to consumers is the flat byte order.
"""

from __future__ import annotations

import enum

import torch

from fp4core.formats.fp4 import as_bytes


class SfLayout(str, enum.Enum):
    """Scale-factor layouts. Names match FlashInfer's ``SfLayout`` members."""

    layout_128x4 = "128x4"
    layout_8x4 = "8x4"
    layout_linear = "linear"

    @classmethod
    def parse(cls, value: "SfLayout | str") -> "SfLayout":
        """Accept an SfLayout, its value ("128x4", "8x4", "linear") or member name."""
        if isinstance(value, cls):
            return value
        if isinstance(value, enum.Enum):  # e.g. FlashInfer's own SfLayout enum
            value = value.name
        for member in cls:
            if value in (member.value, member.name):
                return member
        raise ValueError(
            f"sf_layout: expected one of {[m.value for m in cls]}, got {value!r}")

    @property
    def row_tile(self) -> int:
        return {"128x4": 128, "8x4": 8, "linear": 1}[self.value]

    @property
    def col_tile(self) -> int:
        return 1 if self is SfLayout.layout_linear else 4


def round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


def padded_scale_shape(rows: int, cols: int, layout: SfLayout | str) -> tuple[int, int]:
    """(padded_rows, padded_cols) of a ``rows`` x ``cols`` scale matrix stored in ``layout``."""
    rt, ct = _TILES[SfLayout.parse(layout)]
    return round_up(rows, rt), round_up(cols, ct)


# (row tile, column tile) per layout, looked up once: padded_scale_shape runs on every mm_fp4 call
_TILES = {layout: (layout.row_tile, layout.col_tile) for layout in SfLayout}


def _tile_view_shape(prow: int, pcol: int, layout: SfLayout):
    """Shapes that turn a padded linear matrix into its swizzled order by one permute."""
    if layout is SfLayout.layout_128x4:
        # (R/128, 4, 32, C/4, 4) -> (R/128, C/4, 32, 4, 4)
        return (prow // 128, 4, 32, pcol // 4, 4), (0, 3, 2, 1, 4)
    # 8x4: (R/8, 8, C/4, 4) -> (R/8, C/4, 8, 4)
    return (prow // 8, 8, pcol // 4, 4), (0, 2, 1, 3)


def swizzle_scales(sf: torch.Tensor, layout: SfLayout | str = SfLayout.layout_128x4) -> torch.Tensor:
    """Linear scales (rows, cols) -> the swizzled byte order of ``layout``.

    Args:
        sf: (rows, cols) one-byte dtype (uint8 / float8), linear row-major scales.
        layout: target layout.
    Returns:
        uint8 (padded_rows, padded_cols), contiguous, padding zero. For ``linear`` a copy.
    """
    layout = SfLayout.parse(layout)
    sf = as_bytes(sf)
    if sf.dim() != 2:
        raise ValueError(f"swizzle_scales: sf must be 2-D (rows, cols), got shape {tuple(sf.shape)}")
    rows, cols = sf.shape
    prow, pcol = padded_scale_shape(rows, cols, layout)
    padded = torch.zeros((prow, pcol), dtype=torch.uint8, device=sf.device)
    padded[:rows, :cols] = sf
    if layout is SfLayout.layout_linear:
        return padded
    view_shape, perm = _tile_view_shape(prow, pcol, layout)
    return padded.reshape(view_shape).permute(perm).contiguous().reshape(prow, pcol)


def unswizzle_scales(sf: torch.Tensor, rows: int, cols: int,
                     layout: SfLayout | str = SfLayout.layout_128x4) -> torch.Tensor:
    """Swizzled scale bytes -> linear (rows, cols) uint8 (inverse of ``swizzle_scales``).

    Args:
        sf: any shape whose flat memory order is the swizzled layout, with exactly
            padded_rows * padded_cols bytes (a transposed view such as FlashInfer's
            ``b_sf.T`` is accepted and read in its storage order).
        rows: the unpadded number of scale rows (rows of the operand).
        cols: the unpadded number of scale columns (K / block).
        layout: the layout ``sf`` is stored in.
    """
    layout = SfLayout.parse(layout)
    flat = flat_scale_bytes(sf)
    prow, pcol = padded_scale_shape(rows, cols, layout)
    if flat.numel() != prow * pcol:
        raise ValueError(
            f"unswizzle_scales: expected {prow * pcol} bytes ({prow}x{pcol} padded for "
            f"{rows}x{cols} in layout {layout.value}), got {flat.numel()}")
    if layout is SfLayout.layout_linear:
        return flat.reshape(prow, pcol)[:rows, :cols]
    view_shape, perm = _tile_view_shape(prow, pcol, layout)
    swz_shape = tuple(view_shape[p] for p in perm)
    inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
    linear = flat.reshape(swz_shape).permute(inverse).reshape(prow, pcol)
    return linear[:rows, :cols]


def flat_scale_bytes(sf: torch.Tensor) -> torch.Tensor:
    """The scale bytes in storage order as a 1-D uint8 view (no copy when possible).

    Accepts a contiguous tensor of any rank, or a 2-D transposed view of a contiguous
    tensor (FlashInfer passes ``b_sf.T``).
    """
    sf = as_bytes(sf)
    if sf.is_contiguous():
        return sf if sf.dim() == 1 else sf.reshape(-1)
    if sf.dim() == 2:
        st = sf.t()
        if st.is_contiguous():
            return st.reshape(-1)
    raise ValueError(
        f"scale tensor must be contiguous or the transpose of a contiguous 2-D tensor, "
        f"got shape {tuple(sf.shape)} strides {sf.stride()}")


def scale_offsets(rows: int, cols: int, layout: SfLayout | str,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Flat byte offset of every (r, c) of a rows x cols scale matrix in ``layout``.

    Returns int64 (rows, cols). Gathering ``flat[offsets]`` reads linear scales straight
    from swizzled storage; kernels and tests use the same formula.
    """
    layout = SfLayout.parse(layout)
    _, pcol = padded_scale_shape(rows, cols, layout)
    r = torch.arange(rows, device=device).unsqueeze(1)
    c = torch.arange(cols, device=device).unsqueeze(0)
    if layout is SfLayout.layout_linear:
        return r * pcol + c
    tile_h = layout.row_tile
    tile_bytes = tile_h * 4
    tile = (r // tile_h) * (pcol // 4) + c // 4
    if layout is SfLayout.layout_128x4:
        inner = (r % 32) * 16 + ((r // 32) % 4) * 4 + c % 4
    else:
        inner = (r % 8) * 4 + c % 4
    return tile * tile_bytes + inner
