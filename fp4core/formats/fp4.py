"""The FP4 number formats: E2M1 element codes and the E4M3 / E8M0 block scales.

Everything here is elementwise and works on CPU and CUDA tensors alike. These are the
only definitions of the formats in the project: backends and plugins import them.

E2M1 code (4 bits): bit 3 sign, bits 2..1 exponent, bit 0 mantissa. Magnitudes by code
0..7: 0, 0.5, 1, 1.5, 2, 3, 4, 6. Two codes share a byte: element 2i in the low nibble,
element 2i+1 in the high nibble.
"""

from __future__ import annotations

import enum

import torch

E2M1_MAX = 6.0
E4M3_MAX = 448.0

#: Values of the 16 E2M1 codes (codes 8..15 are the negatives, code 8 is -0.0).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
               -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)

# Round-to-nearest-even onto the magnitude grid: a magnitude above a midpoint rounds up;
# exactly on a midpoint it goes to the neighbour with the even code (mantissa bit 0).
# Midpoints whose upper neighbour is even (0.75->1, 1.75->2, 3.5->4) round up on the tie.
_MID_TIE_DOWN = (0.25, 1.25, 2.5, 5.0)
_MID_TIE_UP = (0.75, 1.75, 3.5)

E4M3_NAN_BYTE = 0x7F
E8M0_NAN_BYTE = 0xFF


class Fp4Format(str, enum.Enum):
    """The two block-scaled FP4 formats.

    NVFP4: E2M1 values, one FP8 E4M3 scale per 16 values along K, fp32 global alpha.
    MXFP4: E2M1 values, one E8M0 (power-of-two) scale per 32 values along K.
    """

    NVFP4 = "nvfp4"
    MXFP4 = "mxfp4"

    @property
    def block_size(self) -> int:
        return 16 if self is Fp4Format.NVFP4 else 32

    @property
    def scale_name(self) -> str:
        return "E4M3" if self is Fp4Format.NVFP4 else "E8M0"

    @classmethod
    def from_flags(cls, use_nvfp4: bool) -> "Fp4Format":
        return cls.NVFP4 if use_nvfp4 else cls.MXFP4


_LUT_CACHE: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def e2m1_lut(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 16-entry code -> value table as a tensor on ``device`` (cached)."""
    device = torch.device(device)
    key = (device, dtype)
    lut = _LUT_CACHE.get(key)
    if lut is None:
        lut = torch.tensor(E2M1_VALUES, dtype=dtype, device=device)
        _LUT_CACHE[key] = lut
    return lut


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round float values to E2M1 codes (round to nearest, ties to even, saturating at ±6).

    Args:
        x: any shape, floating dtype. Values are already divided by their block scale.
    Returns:
        uint8 tensor of codes 0..15, same shape. The sign bit follows the sign of ``x``
        (so -0.1 becomes code 8, negative zero). NaN maps to code 0; callers that care
        mark the block's scale as NaN instead (see ``quantize``).
    """
    mag = x.float().abs()
    code = torch.zeros_like(mag, dtype=torch.uint8)
    for t in _MID_TIE_DOWN:
        code += (mag > t).to(torch.uint8)
    for t in _MID_TIE_UP:
        code += (mag >= t).to(torch.uint8)
    # NaN compares false everywhere, so it already sits at code 0.
    sign = torch.signbit(x).to(torch.uint8) << 3
    return code | torch.where(torch.isnan(x), torch.zeros_like(sign), sign)


def e2m1_decode(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map E2M1 codes (uint8, 0..15, any shape) to their values in ``dtype`` (exact)."""
    return e2m1_lut(codes.device, dtype)[codes.long()]


_PAIR_LUT_CACHE: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def e2m1_decode_packed(packed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values of packed E2M1 bytes: (..., K/2) uint8 or float4_e2m1fn_x2 -> (..., K) ``dtype``.

    Same result as ``e2m1_decode(unpack_fp4(packed))``, in one table lookup per byte (a
    256 x 2 table: low nibble first) instead of unpacking, widening and gathering per value.
    """
    packed = as_bytes(packed)
    key = (packed.device, dtype)
    pairs = _PAIR_LUT_CACHE.get(key)
    if pairs is None:
        lut = e2m1_lut(packed.device, dtype)
        byte = torch.arange(256, device=packed.device)
        pairs = torch.stack((lut[byte & 0x0F], lut[byte >> 4]), dim=1).contiguous()
        _PAIR_LUT_CACHE[key] = pairs
    flat = packed.reshape(-1).to(torch.int32)
    return pairs.index_select(0, flat).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes (..., K) uint8 into bytes (..., K/2): element 2i low nibble, 2i+1 high."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_fp4: the last dimension must be even, got {tuple(codes.shape)}")
    pairs = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous()


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """Unpack bytes (..., K/2) into codes (..., K) uint8 (inverse of ``pack_fp4``)."""
    packed = as_bytes(packed)
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def e4m3_encode(x: torch.Tensor) -> torch.Tensor:
    """Round non-negative float scales to FP8 E4M3 bytes (RNE, saturating at 448).

    NaN becomes the E4M3 NaN byte 0x7F. Returns uint8, same shape.
    """
    # torch's fp32 -> e4m3fn cast rounds to nearest even but does not saturate, so clamp first.
    clamped = x.float().clamp(max=E4M3_MAX)
    return clamped.to(torch.float8_e4m3fn).view(torch.uint8)


def e4m3_decode(b: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 bytes (uint8 or float8_e4m3fn) -> float32 values (exact)."""
    return as_bytes(b).view(torch.float8_e4m3fn).float()


def e8m0_encode_ceil(x: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= x, as an E8M0 byte (biased exponent, 2^(e-127)).

    Rounding up means ``value / scale`` never exceeds the element maximum, which is the
    MXFP4 scale recipe FlashInfer / TensorRT-LLM use (amax / 6 rounded up). Zero and
    tiny values give byte 0 (2^-127); values past 2^127 saturate at 254; NaN gives 0xFF.
    """
    xf = x.float()
    mant, exp = torch.frexp(xf)  # xf = mant * 2^exp, mant in [0.5, 1)
    # An exact power of two (mant == 0.5) is 2^(exp-1); anything else rounds up to 2^exp.
    e = torch.where(mant == 0.5, exp - 1, exp)
    biased = (e + 127).clamp(0, 254)
    biased = torch.where(xf > 0, biased, torch.zeros_like(biased))
    biased = torch.where(torch.isnan(xf) | torch.isinf(xf), torch.full_like(biased, E8M0_NAN_BYTE), biased)
    return biased.to(torch.uint8)


def e8m0_decode(b: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """E8M0 bytes -> values 2^(byte-127) in ``dtype``; byte 0xFF -> NaN.

    ``dtype=torch.float64`` is exact for every byte; float32 holds 2^-127..2^127 exactly
    (2^-127 as a subnormal).
    """
    e = as_bytes(b).to(torch.int32) - 127
    val = torch.ldexp(torch.ones_like(e, dtype=dtype), e.to(dtype))
    return torch.where(as_bytes(b) == E8M0_NAN_BYTE, torch.full_like(val, float("nan")), val)


def decode_scales(b: torch.Tensor, fmt: Fp4Format, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scale bytes of ``fmt`` (E4M3 for NVFP4, E8M0 for MXFP4) -> values in ``dtype``."""
    if fmt is Fp4Format.NVFP4:
        return e4m3_decode(b).to(dtype)
    return e8m0_decode(b, dtype)


_BYTE_DTYPES = {torch.uint8, torch.int8, torch.float8_e4m3fn}
for _name in ("float4_e2m1fn_x2", "float8_e8m0fnu"):
    if hasattr(torch, _name):
        _BYTE_DTYPES.add(getattr(torch, _name))


def is_byte_dtype(dtype: torch.dtype) -> bool:
    """True for the one-byte dtypes FP4 data and scales may arrive in."""
    return dtype in _BYTE_DTYPES


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """View a one-byte tensor (uint8, float4_e2m1fn_x2, float8_e4m3fn, float8_e8m0fnu) as uint8.

    A zero-copy view; raises ValueError for wider dtypes.
    """
    if t.dtype == torch.uint8:
        return t
    if t.dtype in _BYTE_DTYPES:
        return t.view(torch.uint8)
    raise ValueError(f"expected a one-byte dtype (uint8, float4_e2m1fn_x2, float8_*), got {t.dtype}")
