"""Prepared weights: each backend's preferred weight layout, made once.

``fp4core.prepare(b, b_descale)`` runs the ``prepare`` hook of every enabled backend that
has one and supports the weight, and keeps the results side by side. ``mm_fp4`` accepts the
returned ``PreparedWeight`` in place of ``b`` (with ``b_descale=None``) and hands each backend
its own layout, so backends that stream a shuffled weight compete in ``auto`` on equal terms.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from fp4core.dispatch.selector import selector
from fp4core.formats.fp4 import Fp4Format
from fp4core.formats.layouts import SfLayout
from fp4core.dispatch.problem import Operands, Problem, device_info
from fp4core.dispatch.validation import check_format, check_out_dtype, weight

log = logging.getLogger("fp4core")


@dataclasses.dataclass
class PreparedWeight:
    """A weight in canonical form plus every interested backend's own layout.

    Attributes:
        n, k: weight shape in elements (N rows of K FP4 values).
        fmt: NVFP4 or MXFP4.
        canonical: Operands with ``b`` uint8 (N, K/2) and 128x4 ``b_scale`` bytes.
        by_backend: backend name -> Operands its ``prepare`` hook returned.
        skipped: backend name -> why it has no prepared copy.
        activation: what the calls' A will be: "fp4" (``mm_fp4``) or "bf16" (weight-only
            ``mm_bf16_fp4``, fp16 activations too); backends prepared only for that kind.
    """

    n: int
    k: int
    fmt: Fp4Format
    device: torch.device
    canonical: Operands
    by_backend: dict[str, Operands]
    skipped: dict[str, str]
    activation: str = "fp4"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.k)

    def operands_for(self, backend: str) -> Operands | None:
        """The weight as ``backend`` wants it: its prepared copy, else canonical (None if the
        backend needs its own layout and has none)."""
        ops = self.by_backend.get(backend)
        if ops is not None:
            return ops
        be = selector.registry.get(backend)
        if be is not None and be.info.needs_prepare:
            return None
        return self.canonical

    def __repr__(self) -> str:
        return (f"PreparedWeight(n={self.n}, k={self.k}, fmt={self.fmt.value}, device={self.device}, "
                f"prepared_for={sorted(self.by_backend)})")


def weight_problem(n: int, k: int, fmt: Fp4Format, out_dtype: torch.dtype, a_sf_layout: SfLayout,
                   has_alpha: bool, device: torch.device, act_dtype: torch.dtype | None = None) -> Problem:
    """The problem a ``prepare`` hook sees: M unknown (None), weight prepared."""
    return Problem(None, n, k, fmt, out_dtype, a_sf_layout, has_alpha, device_info(device), prepared=True,
                   act_dtype=act_dtype)


def prepare(b: torch.Tensor, b_descale: torch.Tensor, *, block_size: int | None = None,
            use_nvfp4: bool = True, out_dtype: torch.dtype = torch.bfloat16,
            use_8x4_sf_layout: bool = False, has_alpha: bool = True,
            backends: list[str] | None = None, activations: str = "fp4") -> PreparedWeight:
    """Prepare a weight once for every backend (or the named ``backends``).

    Args:
        b: (K/2, N) packed FP4 weight, column-major (``b_fp4.T``), uint8 or float4_e2m1fn_x2,
            exactly as ``mm_fp4`` takes it.
        b_descale: its scales, 128x4 layout, transposed like ``mm_fp4``'s ``b_descale``.
        block_size: 16 (NVFP4) or 32 (MXFP4); defaults to the format's.
        use_nvfp4: NVFP4 (True) or MXFP4 (False).
        out_dtype: the output dtype the weight will be called with (torch.bfloat16 or
            torch.float16), so backends can decline what they cannot run.
        use_8x4_sf_layout: whether calls will pass A's scales in the 8x4 layout.
        has_alpha: whether calls will pass an alpha tensor.
        backends: restrict to these backend names (default: all enabled).
        activations: "fp4" for ``mm_fp4`` calls, "bf16" for weight-only ``mm_bf16_fp4`` calls
            (see ``fp4core.prepare_bf16_fp4_weights``).
    Returns:
        PreparedWeight, accepted by ``mm_fp4`` as ``b`` (pass ``b_descale=None``).
    """
    fmt = Fp4Format.from_flags(use_nvfp4)
    check_format(fmt.block_size if block_size is None else block_size, use_nvfp4)
    check_out_dtype(out_dtype)
    b8, bsf, n = weight(b, b_descale, fmt, None, None, check=True)
    k = b8.shape[1] * 2
    layout = SfLayout.layout_8x4 if use_8x4_sf_layout else SfLayout.layout_128x4
    if activations not in ("fp4", "bf16"):
        raise ValueError(f"activations: expected 'fp4' or 'bf16', got {activations!r}")
    act_dtype = None if activations == "fp4" else torch.bfloat16
    problem = weight_problem(n, k, fmt, out_dtype, layout, has_alpha, b.device, act_dtype)
    canonical = Operands(None, None, b8, bsf)
    by_backend: dict[str, Operands] = {}
    skipped: dict[str, str] = {}
    for be in selector.registry.backends():
        if backends is not None and be.name not in backends:
            continue
        if not be.has_hook("prepare"):
            continue
        answer = be.supports(problem)
        if not answer:
            skipped[be.name] = answer.reason
            continue
        try:
            by_backend[be.name] = be.prepare(problem, canonical)
        except Exception as exc:  # one backend's failure leaves the others prepared
            skipped[be.name] = f"prepare() raised {type(exc).__name__}: {exc}"
            log.warning("backend %r: %s", be.name, skipped[be.name])
    return PreparedWeight(n, k, fmt, b.device, canonical, by_backend, skipped, activations)
