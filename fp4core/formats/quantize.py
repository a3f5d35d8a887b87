"""Quantize float matrices to NVFP4 / MXFP4 and dequantize them back.

The outputs are exactly the operands ``mm_fp4`` (and FlashInfer's ``mm_fp4``) takes:
packed E2M1 bytes (rows, K/2) and swizzled scale bytes. These reference implementations
are built from torch operations and run on any device; on CUDA tensors the quantizers use
the Triton kernels of ``fp4core.formats.kernels`` when Triton is installed (the same bytes; set
FP4CORE_QUANT_KERNEL=torch to force the torch code).

Non-finite input: a block (16 or 32 values along K) that holds NaN or ±Inf gets the NaN
scale byte (E4M3 0x7F, E8M0 0xFF) and zero codes, so everything computed from that block
is NaN instead of a silently wrong finite number.
"""

from __future__ import annotations

import torch

from fp4core.formats.fp4 import (E2M1_MAX, E4M3_MAX, E4M3_NAN_BYTE, E8M0_NAN_BYTE, Fp4Format,
                      decode_scales, e2m1_decode_packed, e2m1_encode, e4m3_decode, e4m3_encode,
                      e8m0_decode, e8m0_encode_ceil, pack_fp4)
from fp4core.formats.layouts import SfLayout, swizzle_scales, unswizzle_scales


def _gpu_kernels(x: torch.Tensor):
    """The Triton quantizers for a CUDA ``x`` (same bytes as the code below), else None."""
    if not x.is_cuda:
        return None
    from fp4core.formats.kernels import quantize_kernels
    return quantize_kernels()


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the Triton kernels take it: unit stride along K, float32/bf16/fp16 (other float
    dtypes as float32, which is what the CPU code below computes in)."""
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        x = x.float()
    return x if x.stride(1) == 1 else x.contiguous()


def _check_input(x: torch.Tensor, block: int, fn: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{fn}: x must be 2-D (rows, K), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{fn}: x must be float32/float16/bfloat16, got {x.dtype}")
    if x.shape[1] % block:
        raise ValueError(f"{fn}: K = x.shape[1] = {x.shape[1]} must be a multiple of the block size {block}")


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    rows, k = x.shape
    return x.float().reshape(rows, k // block, block)


def compute_global_scale(x: torch.Tensor) -> torch.Tensor:
    """NVFP4 global scale ``448 * 6 / amax(|x|)`` as a float32 tensor of shape (1,).

    This is the recipe FlashInfer's examples use, with the amax over the finite values: a NaN
    or an Inf in ``x`` marks only its own block (NaN scale, zero codes) instead of shrinking
    the scale of every other value. An ``x`` without a finite non-zero value (or with no
    elements) gives 1.0.
    """
    a = x.detach().float().abs()
    amax = torch.where(a < float("inf"), a, 0.0).amax().reshape(1) if a.numel() else a.new_zeros(1)
    return torch.where(amax > 0, (E4M3_MAX * E2M1_MAX) / amax, torch.ones_like(amax))


def check_global_scale(gs: torch.Tensor, name: str = "global_scale") -> None:
    """Refuse a global scale that is not one positive finite number (a negative one would
    give all-zero codes, a NaN/Inf one NaN scales everywhere). Reads the value (a host sync
    on CUDA), so the check is skipped while a CUDA graph is captured or torch.compile traces.

    Raises ValueError naming ``name`` and the value."""
    if gs.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if torch.compiler.is_compiling():
        return
    v = float(gs.reshape(-1)[0])
    if not (v > 0 and v < float("inf")):
        raise ValueError(f"{name}: expected one positive finite value, got {v}")


def nvfp4_quantize(x: torch.Tensor, global_scale: torch.Tensor | float,
                   sfLayout: SfLayout | str = SfLayout.layout_128x4, do_shuffle: bool = False,
                   sf_vec_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` to NVFP4.

    Per block of 16 along K: scale ``s = E4M3(amax(block) * global_scale / 6)`` (round to
    nearest even, saturating at 448), codes ``E2M1(x * global_scale / s)`` (round to nearest
    even, saturating at 6), computed in float32. The dequantized value is
    ``code * s / global_scale``; ``mm_fp4`` takes ``alpha = 1 / (gs_a * gs_b)``.

    Args:
        x: (rows, K) float32/float16/bfloat16, K a multiple of 16.
        global_scale: float or float32 tensor with one element (see ``compute_global_scale``).
        sfLayout: scale layout of the result: "128x4" (default), "8x4" or "linear".
        do_shuffle: FlashInfer's trtllm weight shuffle; not done here — use
            ``fp4core.prepare`` so each backend gets the weight layout it wants.
        sf_vec_size: must be 16 (kept for FlashInfer call compatibility).
    Returns:
        (x_fp4, x_sf): uint8 (rows, K/2) packed codes, and uint8 scales of shape
        (padded_rows, padded_K/16) in ``sfLayout`` order.
    """
    if do_shuffle:
        raise ValueError("nvfp4_quantize: do_shuffle=True is not supported; quantize with "
                         "do_shuffle=False and call fp4core.prepare(b, b_descale) once instead")
    if sf_vec_size != 16:
        raise ValueError(f"nvfp4_quantize: NVFP4 uses sf_vec_size=16, got {sf_vec_size}")
    _check_input(x, 16, "nvfp4_quantize")
    if not isinstance(global_scale, (torch.Tensor, float, int)) or isinstance(global_scale, bool):
        raise TypeError(f"nvfp4_quantize: global_scale must be a number or a float32 tensor with one element "
                        f"(fp4core.compute_global_scale(x) gives the usual one), got {global_scale!r}")
    gs = torch.as_tensor(global_scale, dtype=torch.float32, device=x.device).reshape(-1)
    if gs.numel() != 1:
        raise ValueError(f"nvfp4_quantize: global_scale must have one element, got {gs.numel()}")
    check_global_scale(gs, "nvfp4_quantize: global_scale")
    kernels = _gpu_kernels(x)
    if kernels is not None:
        q, sf, _ = kernels.quantize(_unit_stride(x), Fp4Format.NVFP4, SfLayout.parse(sfLayout), gs, False)
        return q, sf
    blocks = _blocks(x, 16)
    amax = blocks.abs().amax(dim=-1)
    scale_f = torch.where(amax > 0, amax * gs / E2M1_MAX, torch.zeros_like(amax))
    scale_b = e4m3_encode(scale_f)
    scale_v = e4m3_decode(scale_b)
    # Encoding multiplier global_scale / s (0 for an all-zero block, as TensorRT-LLM does).
    mult = torch.where(scale_v > 0, gs / scale_v, torch.zeros_like(scale_v))
    codes = e2m1_encode(blocks * mult.unsqueeze(-1))
    bad = ~torch.isfinite(blocks).all(dim=-1) | ~torch.isfinite(gs)
    scale_b = torch.where(bad, torch.full_like(scale_b, E4M3_NAN_BYTE), scale_b)
    codes = torch.where(bad.unsqueeze(-1), torch.zeros_like(codes), codes)
    x_fp4 = pack_fp4(codes.reshape(x.shape))
    return x_fp4, swizzle_scales(scale_b, sfLayout)


def mxfp4_quantize(x: torch.Tensor, sfLayout: SfLayout | str = SfLayout.layout_128x4
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` to MXFP4.

    Per block of 32 along K: scale ``s = 2^ceil(log2(amax(block) / 6))`` as E8M0 (so no
    value saturates), codes ``E2M1(x / s)`` (exact division by a power of two, then round
    to nearest even).

    Args:
        x: (rows, K) float32/float16/bfloat16, K a multiple of 32.
        sfLayout: scale layout of the result: "128x4" (default), "8x4" or "linear".
    Returns:
        (x_fp4, x_sf): uint8 (rows, K/2) packed codes, and uint8 E8M0 scales of shape
        (padded_rows, padded_K/32) in ``sfLayout`` order.
    """
    _check_input(x, 32, "mxfp4_quantize")
    kernels = _gpu_kernels(x)
    if kernels is not None:
        q, sf, _ = kernels.quantize(_unit_stride(x), Fp4Format.MXFP4, SfLayout.parse(sfLayout), None, False)
        return q, sf
    blocks = _blocks(x, 32)
    amax = blocks.abs().amax(dim=-1)
    scale_b = e8m0_encode_ceil(amax / E2M1_MAX)
    scale_v = e8m0_decode(scale_b)
    codes = e2m1_encode(blocks / scale_v.unsqueeze(-1))
    bad = ~torch.isfinite(blocks).all(dim=-1)
    scale_b = torch.where(bad, torch.full_like(scale_b, E8M0_NAN_BYTE), scale_b)
    codes = torch.where(bad.unsqueeze(-1), torch.zeros_like(codes), codes)
    x_fp4 = pack_fp4(codes.reshape(x.shape))
    return x_fp4, swizzle_scales(scale_b, sfLayout)


def dequantize(x_fp4: torch.Tensor, x_sf: torch.Tensor, global_scale: torch.Tensor | float | None = None,
               *, use_nvfp4: bool = True, sfLayout: SfLayout | str = SfLayout.layout_128x4,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Exact dequantization: ``code * scale`` (divided by ``global_scale`` when given).

    Args:
        x_fp4: (rows, K/2) packed codes, uint8 or float4_e2m1fn_x2.
        x_sf: scale bytes in ``sfLayout`` order (any shape with the padded byte count; a
            transposed view like FlashInfer's ``b_sf.T`` is read in storage order).
        global_scale: NVFP4 global scale used at quantization, or None to leave it out.
        use_nvfp4: True for NVFP4 (E4M3 scales per 16), False for MXFP4 (E8M0 per 32).
        sfLayout: layout of ``x_sf``.
        dtype: float32 or float64 (exact for every NVFP4 value; float64 also for every
            MXFP4 value), or bfloat16 / float16 (NVFP4 products are exact in bf16).
    Returns:
        (rows, K) tensor of ``dtype`` on ``x_fp4``'s device.
    """
    fmt = Fp4Format.from_flags(use_nvfp4)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    vals = e2m1_decode_packed(x_fp4, work)
    rows, k = vals.shape
    sf = unswizzle_scales(x_sf, rows, k // fmt.block_size, sfLayout)
    scales = decode_scales(sf, fmt, work)
    # in place: the values are a fresh temporary, and a second (rows, K) buffer costs a pass
    out = vals.view(rows, k // fmt.block_size, fmt.block_size).mul_(scales.unsqueeze(-1)).view(rows, k)
    if global_scale is not None:
        out = out / torch.as_tensor(global_scale, dtype=work, device=out.device).reshape(())
    return out.to(dtype)
