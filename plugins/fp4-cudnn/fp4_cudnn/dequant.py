"""Fused FP4 -> bf16 dequantization of A and B in one Triton launch (the SM80-SM90 path).

Each program decodes one tile of ``BR`` rows x ``KBYTES`` packed bytes of one operand. Every
thread loads ``VB`` packed bytes per row and stores their bf16 values as 16-byte stores (one
int32 of two bf16 per byte), the threads of a warp side by side along K; scale bytes are read
straight from the swizzled 128x4 / 8x4 storage. E2M1 codes and E4M3 / E8M0 scales are
decoded by placing their bits under the fp32 exponent and multiplying by a power of two (no
lookup tables, no float8 conversions, no per-value compares), multiplied in fp32 and stored
as bf16. Every product is exact in bf16, so the result equals
``fp4core.dequantize(..., dtype=torch.bfloat16)`` bit for bit (the tests check it; the fp32
multiplies compile to ``mul.f32`` without ``.ftz``, so fp32 subnormals -- the E2M1 code 0.5
before its rescale, E8M0 scale bytes 0..2 -- stay exact). With ``alpha_a`` the A values are
``bf16(fp32(code * scale) * alpha)``: the "plain" graph folds the GEMM's alpha into A this way
(one extra rounding).

Programs ``[0, tiles_a)`` decode A, the rest decode B: one launch for both operands. Operands
whose tiles are all full (rows a multiple of ``BR``, K/2 of ``KBYTES``) are decoded without
bounds masks. Triton is imported on first use, so this module imports on machines without it.
"""

from __future__ import annotations

import functools

import torch

from fp4core.formats.fp4 import Fp4Format
from fp4core.formats.layouts import SfLayout, padded_scale_shape

#: Tile: BR rows x KBYTES packed bytes per program, VB packed bytes per thread vector (4, or a
#: whole scale block: 8 for NVFP4, 16 for MXFP4). The tile shape was the fastest of six on the
#: H100 (bench.py --dequant-sweep, 28672 x 8192 NVFP4 weight: 2.67-2.79 TB/s with the previous
#: decode; copy 2.96 TB/s).
DEFAULT_CONFIG = {"BR": 32, "KBYTES": 256, "VB": 4, "num_warps": 8}


@functools.lru_cache(maxsize=None)
def _kernel():
    from ._triton_kernels import dequant_pair  # needs triton: imported on first use only

    return dequant_pair


def _tiles(rows: int, kbytes: int, br: int, tile_kbytes: int) -> int:
    return -(-rows // br) * -(-kbytes // tile_kbytes)


def dequantize_pair(a: torch.Tensor | None, a_scale: torch.Tensor | None, a_out: torch.Tensor | None,
                    a_layout: SfLayout, b: torch.Tensor, b_scale: torch.Tensor, b_out: torch.Tensor,
                    fmt: Fp4Format, config: dict | None = None,
                    alpha_a: torch.Tensor | None = None) -> None:
    """Dequantize A and B into bf16 buffers with one kernel launch on the current stream.

    Args:
        a: uint8 (M, K/2) packed E2M1, row-major; or None to decode only B.
        a_scale: uint8 1-D, A's scale bytes in ``a_layout`` order (128x4 or 8x4).
        a_out: bf16 (M, K) contiguous destination.
        a_layout: layout of ``a_scale``.
        b: uint8 (N, K/2) packed E2M1, row-major.
        b_scale: uint8 1-D, B's scale bytes in 128x4 order.
        b_out: bf16 (N, K) contiguous destination.
        fmt: NVFP4 (E4M3 scales per 16 values) or MXFP4 (E8M0 per 32).
        config: tile sizes {"BR", "KBYTES", "VB", "num_warps"}; DEFAULT_CONFIG if None.
        alpha_a: optional float32 (1,) device tensor multiplied into A's values
            (``bf16(fp32(code * scale) * alpha)``); read on the device, no host sync.
    No allocation, no host synchronisation: safe inside CUDA-graph capture.
    """
    cfg = config or DEFAULT_CONFIG
    br, tile_kb, warps = cfg["BR"], cfg["KBYTES"], cfg["num_warps"]
    vb = cfg.get("VB", 4)
    bpb = fmt.block_size // 2                      # packed bytes per scale block
    if tile_kb % vb or bpb % vb:
        raise ValueError(f"fp4-cudnn dequantization: VB={vb} must divide KBYTES={tile_kb} and "
                         f"{bpb} (packed bytes per {fmt.name} scale block)")
    kbytes = b.shape[1]
    k_blocks = 2 * kbytes // fmt.block_size
    b_rows = b.shape[0]
    _, b_pcol = padded_scale_shape(b_rows, k_blocks, SfLayout.layout_128x4)
    if a is not None:
        a_rows = a.shape[0]
        _, a_pcol = padded_scale_shape(a_rows, k_blocks, a_layout)
        tiles_a = _tiles(a_rows, kbytes, br, tile_kb)
    else:  # decode B only: point A's arguments at B's, with zero tiles
        a, a_scale, a_out, a_rows, a_pcol, tiles_a = b, b_scale, b_out, 0, b_pcol, 0
    tiles_b = _tiles(b_rows, kbytes, br, tile_kb)
    even_k = kbytes % tile_kb == 0
    # The kernel writes one int32 (two bf16) per packed byte.
    _kernel()[(tiles_a + tiles_b,)](
        a, a_scale, a_out.view(torch.int32), a_rows, a_pcol // 4, tiles_a,
        b, b_scale, b_out.view(torch.int32), b_rows, b_pcol // 4,
        kbytes, alpha_a if alpha_a is not None else b_scale,  # any pointer when unused
        BR=br, NV=tile_kb // vb, VB=vb, BPB=bpb, NVFP4=fmt is Fp4Format.NVFP4,
        A_SF_TILE_ROWS=SfLayout.parse(a_layout).row_tile if tiles_a else 128,
        ALPHA_A=alpha_a is not None and tiles_a > 0,
        A_EVEN=even_k and a_rows % br == 0, B_EVEN=even_k and b_rows % br == 0, num_warps=warps)
