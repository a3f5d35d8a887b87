"""Accept weights FlashInfer shuffled for its trtllm ``mm_fp4`` path."""

from __future__ import annotations

import torch

import fp4core
from fp4core.formats.fp4 import Fp4Format, as_bytes

from .layout import unshuffle_flashinfer


def prepare_flashinfer_shuffled(b: torch.Tensor, b_descale: torch.Tensor, *, use_nvfp4: bool = True,
                                epilogue_tile_m: int = 128, **prepare_kwargs) -> fp4core.PreparedWeight:
    """``fp4core.prepare`` for a weight quantized with FlashInfer's trtllm shuffle.

    Args:
        b: (K/2, N) packed E2M1, the ``.T`` of the row-shuffled (N, K/2) tensor
            (``shuffle_matrix_a(b_fp4, epilogue_tile_m)``), as FlashInfer's ``mm_fp4`` takes it.
        b_descale: its scales from ``shuffle_matrix_sf_a`` (rows shuffled the same way, then
            128x4-swizzled), flat, 2-D or transposed.
        use_nvfp4: NVFP4 (True) or MXFP4 (False).
        epilogue_tile_m: the epilogue tile the shuffle used (128: blocks of 32 rows).
        prepare_kwargs: passed on to ``fp4core.prepare`` (out_dtype, backends, ...).
    Returns:
        A PreparedWeight for every backend (the canonical weight is restored first), to pass
        to ``mm_fp4`` with ``b_descale=None`` and, as in FlashInfer, ``use_8x4_sf_layout=True``
        activations if you have them (128x4 works as well).
    """
    fmt = Fp4Format.from_flags(use_nvfp4)
    rows = as_bytes(b).t()
    if not rows.is_contiguous():
        raise ValueError("b: expected the (K/2, N) transposed view of a contiguous (N, K/2) tensor")
    canon, sf = unshuffle_flashinfer(rows, b_descale, fmt, epilogue_tile_m)
    return fp4core.prepare(canon.t(), sf, use_nvfp4=use_nvfp4, **prepare_kwargs)
