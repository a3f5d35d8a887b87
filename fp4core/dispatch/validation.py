"""Turn ``mm_fp4``'s FlashInfer-style arguments into a Problem and canonical Operands.

Every check names the argument, what was expected and what was given. The views made
here are zero-copy: ``b`` arrives as a column-major (K/2, N) view of a row-major (N, K/2)
tensor, and the backends get that row-major tensor back.
"""

from __future__ import annotations

import torch

from fp4core.formats.fp4 import Fp4Format, as_bytes, is_byte_dtype
from fp4core.formats.layouts import SfLayout, flat_scale_bytes, padded_scale_shape
from fp4core.dispatch.problem import Operands, Problem, problem_of

OUT_DTYPES = (torch.bfloat16, torch.float16)
_E8M0 = getattr(torch, "float8_e8m0fnu", None)
# dtypes a scale tensor may come in: raw bytes, or the scale format's own torch dtype
_SCALE_DTYPES = {
    Fp4Format.NVFP4: frozenset({torch.uint8, torch.float8_e4m3fn}),
    Fp4Format.MXFP4: frozenset({torch.uint8} | ({_E8M0} if _E8M0 is not None else set())),
}


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_format(block_size: int, use_nvfp4: bool) -> Fp4Format:
    fmt = Fp4Format.from_flags(bool(use_nvfp4))
    if block_size != fmt.block_size:
        raise ValueError(f"block_size: {fmt.value} uses block_size={fmt.block_size}, got {block_size} "
                         f"(use_nvfp4={use_nvfp4})")
    return fmt


def check_out_dtype(out_dtype: torch.dtype) -> None:
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype: expected torch.bfloat16 or torch.float16, got {out_dtype}")


def _check_packed(name: str, t, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {what}, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor {what}, got shape {_shape(t)}")
    if not is_byte_dtype(t.dtype) or t.dtype == torch.float8_e4m3fn:
        raise ValueError(f"{name}: expected packed FP4 as uint8 or float4_e2m1fn_x2 {what}, got {t.dtype}")


def check_scales(name: str, sf, fmt: Fp4Format, rows: int, k: int, layout: SfLayout,
                 device: torch.device, operand: str) -> torch.Tensor:
    """Validate a scale tensor and return its bytes as a flat uint8 view."""
    if not isinstance(sf, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of scale bytes, got {type(sf).__name__}")
    allowed = _SCALE_DTYPES[fmt]
    if sf.dtype not in allowed:
        names = sorted(str(d).replace("torch.", "") for d in allowed)
        raise ValueError(f"{name}: {fmt.value} scales ({fmt.scale_name}) must be one of {names}, got {sf.dtype}")
    if sf.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (where a is), got {sf.device}")
    cols = k // fmt.block_size
    prow, pcol = padded_scale_shape(rows, cols, layout)
    if sf.numel() != prow * pcol:
        raise ValueError(
            f"{name}: expected {prow * pcol} scale bytes for {operand} ({rows} rows x {cols} blocks, "
            f"padded to {prow}x{pcol} in the {layout.value} layout), got shape {_shape(sf)} "
            f"= {sf.numel()} bytes")
    try:
        return flat_scale_bytes(sf)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def check_alpha(alpha, device: torch.device) -> None:
    if alpha is None:
        return
    if not isinstance(alpha, torch.Tensor):
        raise TypeError(f"alpha: expected None or a float32 tensor with one element, got {type(alpha).__name__}")
    if alpha.dtype != torch.float32 or alpha.numel() != 1:
        raise ValueError(f"alpha: expected a float32 tensor with one element, got {alpha.dtype} "
                         f"with shape {_shape(alpha)}")
    if alpha.device != device:
        raise ValueError(f"alpha: expected a tensor on {device} (where a is), got {alpha.device}")


def check_out(out, m: int, n: int, out_dtype: torch.dtype, device: torch.device) -> None:
    if out is None:
        return
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out: expected None or a torch.Tensor, got {type(out).__name__}")
    if _shape(out) != (m, n):
        raise ValueError(f"out: expected shape ({m}, {n}), got {_shape(out)}")
    if out.dtype != out_dtype:
        raise ValueError(f"out: expected dtype {out_dtype} (out_dtype), got {out.dtype}")
    if out.device != device:
        raise ValueError(f"out: expected a tensor on {device} (where a is), got {out.device}")
    if not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous tensor, got strides {out.stride()}")
    # A backend writes out in place: refuse here what torch would refuse inside a backend's
    # run, where the error would read as a backend failure and auto would leave it out.
    if out.requires_grad and torch.is_grad_enabled():
        raise ValueError("out: expected a tensor that does not require grad (it is written in place), "
                         "got one with requires_grad=True")
    if out.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError("out: got an inference tensor outside torch.inference_mode(); it cannot be "
                         "written in place there")


# Metadata of argument tensors that passed the checks -> what the checks derived. A model calls
# mm_fp4 with the same shapes, dtypes and strides over and over; a hit skips re-validating
# them (about half of the host time of a call). Bounded: cleared when it grows large.
_CHECKED: dict[tuple, tuple[int, int]] = {}
_CHECKED_MAX = 4096


def _remember(key: tuple, value: tuple[int, int]) -> None:
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[key] = value


def _meta_key(tag: str, x, sf, fmt: Fp4Format, layout: SfLayout) -> tuple | None:
    """What every check on (x, sf) depends on; None for anything but two plain tensors
    (subclasses and non-tensors always take the full checks)."""
    if type(x) is not torch.Tensor or type(sf) is not torch.Tensor:
        return None
    return (tag, x.shape, x.stride(), x.dtype, x.device, sf.shape, sf.stride(), sf.dtype, sf.device,
            fmt, layout)


def activation(a, a_descale, fmt: Fp4Format, layout: SfLayout, check: bool
               ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Validate A and its scales; return (a bytes (M, K/2), flat scale bytes, M, K)."""
    if not check:
        return as_bytes(a), flat_scale_bytes(a_descale), a.shape[0], a.shape[1] * 2
    key = _meta_key("a", a, a_descale, fmt, layout)
    if key is not None and key in _CHECKED:
        return as_bytes(a), flat_scale_bytes(a_descale), a.shape[0], a.shape[1] * 2
    _check_packed("a", a, "of shape (M, K/2)")
    if not a.is_contiguous():
        raise ValueError(f"a: expected a row-major contiguous (M, K/2) tensor, got strides {a.stride()}")
    m, k = a.shape[0], a.shape[1] * 2
    if k % fmt.block_size:
        raise ValueError(f"a: K = 2 * a.shape[1] = {k} must be a multiple of the {fmt.value} block size "
                         f"{fmt.block_size}")
    sf = check_scales("a_descale", a_descale, fmt, m, k, layout, a.device, "a")
    if key is not None:
        _remember(key, (m, k))
    return as_bytes(a), sf, m, k


def weight(b, b_descale, fmt: Fp4Format, k: int | None, device: torch.device | None, check: bool
           ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Validate FlashInfer-style B (K/2, N) column-major and its transposed scales.

    Returns (b bytes (N, K/2) row-major, flat 128x4 scale bytes, N).
    """
    if not check:
        b_rows = as_bytes(b).t()
        return b_rows, flat_scale_bytes(b_descale), b_rows.shape[0]
    key = _meta_key("b", b, b_descale, fmt, SfLayout.layout_128x4)
    if key is not None and key in _CHECKED:
        if k is not None and b.shape[0] * 2 != k:
            raise ValueError(f"b: K mismatch: a has K/2 = {k // 2} packed columns, b.shape[0] = "
                             f"{b.shape[0]} (b is (K/2, N): pass b_fp4.T)")
        if device is not None and b.device != device:
            raise ValueError(f"b: expected a tensor on {device} (where a is), got {b.device}")
        return as_bytes(b).t(), flat_scale_bytes(b_descale), b.shape[1]
    _check_packed("b", b, "of shape (K/2, N)")
    if k is not None and b.shape[0] * 2 != k:
        raise ValueError(f"b: K mismatch: a has K/2 = {k // 2} packed columns, b.shape[0] = {b.shape[0]} "
                         f"(b is (K/2, N): pass b_fp4.T)")
    if device is not None and b.device != device:
        raise ValueError(f"b: expected a tensor on {device} (where a is), got {b.device}")
    if not b.t().is_contiguous():
        raise ValueError(f"b: expected a column-major (K/2, N) view (b_fp4.T of a contiguous (N, K/2) "
                         f"tensor), got shape {_shape(b)} strides {b.stride()}")
    kk = b.shape[0] * 2
    if kk % fmt.block_size:
        raise ValueError(f"b: K = 2 * b.shape[0] = {kk} must be a multiple of the {fmt.value} block size "
                         f"{fmt.block_size}")
    n = b.shape[1]
    sf = check_scales("b_descale", b_descale, fmt, n, kk, SfLayout.layout_128x4, b.device, "b")
    if key is not None:
        _remember(key, (n, kk))
    return as_bytes(b).t(), sf, n


def build_problem(a, b, a_descale, b_descale, alpha, out_dtype, out, block_size,
                  use_8x4_sf_layout, use_nvfp4, check: bool) -> tuple[Problem, Operands]:
    """Validate a plain (unprepared) call and describe it. See ``fp4core.mm_fp4``."""
    fmt = check_format(block_size, use_nvfp4) if check else Fp4Format.from_flags(use_nvfp4)
    layout = SfLayout.layout_8x4 if use_8x4_sf_layout else SfLayout.layout_128x4
    if check:
        check_out_dtype(out_dtype)
    a8, asf, m, k = activation(a, a_descale, fmt, layout, check)
    b8, bsf, n = weight(b, b_descale, fmt, k, a.device, check)
    if check:
        check_alpha(alpha, a.device)
        check_out(out, m, n, out_dtype, a.device)
    problem = problem_of(m, n, k, fmt, out_dtype, layout, alpha is not None, a.device, False)
    return problem, Operands(a8, asf, b8, bsf, alpha)


def weight_rows(b, b_descale, fmt: Fp4Format, k: int | None, device: torch.device | None
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Validate a row-major (N, K/2) packed weight (``mm_bf16_fp4``'s ``b``, FlashInfer's
    convention there) and its 128x4 scales. Returns (b bytes (N, K/2), flat scale bytes, N)."""
    _check_packed("b", b, "of shape (N, K/2)")
    if not b.is_contiguous():
        raise ValueError(f"b: expected a row-major contiguous (N, K/2) tensor, got shape {_shape(b)} "
                         f"strides {b.stride()}")
    if k is not None and b.shape[1] * 2 != k:
        raise ValueError(f"b: K mismatch: a has K = {k}, b is (N, K/2) = {_shape(b)}, so K = {b.shape[1] * 2}")
    if device is not None and b.device != device:
        raise ValueError(f"b: expected a tensor on {device} (where a is), got {b.device}")
    n, kk = b.shape[0], b.shape[1] * 2
    if kk % fmt.block_size:
        raise ValueError(f"b: K = 2 * b.shape[1] = {kk} must be a multiple of the {fmt.value} block size "
                         f"{fmt.block_size}")
    sf = check_scales("b_descale", b_descale, fmt, n, kk, SfLayout.layout_128x4, b.device, "b")
    return as_bytes(b), sf, n


ACT_DTYPES = (torch.bfloat16, torch.float16)


def plain_activation(a) -> tuple[int, int]:
    """Validate a weight-only call's activation: (M, K) bfloat16/float16, row-major. Returns (M, K)."""
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"a: expected a torch.Tensor, got {type(a).__name__}")
    if a.dim() != 2:
        raise ValueError(f"a: expected a 2-D (M, K) tensor, got shape {_shape(a)}")
    if a.dtype not in ACT_DTYPES:
        raise ValueError(f"a: expected torch.bfloat16 or torch.float16 activations, got {a.dtype} "
                         f"(packed FP4 activations go to fp4core.mm_fp4)")
    if not a.is_contiguous():
        raise ValueError(f"a: expected a row-major contiguous (M, K) tensor, got strides {a.stride()}")
    return a.shape[0], a.shape[1]
