"""The eager fast path of ``Fp4Linear``: one decision per (module, M, input dtype), reused.

A model calls each layer with the same few batch sizes. ``LinearPlan`` freezes what a call
needs once (the backend and tactic ``auto`` chose, the problem as that backend sees it, the
weight operands in that backend's layout, and the backend's bound launcher: its ``bind``
hook, or ``run``), so a call is: quantize (one or two Triton launches, alpha on the device, into buffers
the plan reuses), allocate the output, launch. No
argument validation (the module owns the weight; the input was checked by shape), no
``torch.library`` dispatch, no PreparedWeight lookup.

An NVFP4 plan of a small input (M x K <= ``FUSED_QUANT_MAX_ELEMS``) whose chosen backend
quantizes inside its GEMM (the optional ``bind_quantizing`` hook, bit-identical to the two
steps with the same tactic) runs one launch instead: ``fused(x, gs, w_gs, alpha, out)``.

A plan is valid while its ``signature`` matches: the selector's generation (backends,
tuning cache, tuning mode, failures), the weight's identity and version counters, the
requested backend and the activation-scale mode. ``LayerPlans`` keeps one layer's plans; the
module calls it directly when eager, and ``torch.ops.fp4core.linear_fp4`` (what
``torch.compile`` traces) calls the same object through its key, so compiled and eager models
share plans and speed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import torch

from fp4core.dispatch.selector import selector
from fp4core.errors import BackendFailedError
from fp4core.formats.fp4 import Fp4Format
from fp4core.dispatch.hooks import Tactic
from fp4core.formats.layouts import SfLayout
from fp4core.pytorch.ops import version_counter
from fp4core.dispatch.prepared import PreparedWeight
from fp4core.dispatch.problem import Operands, Problem, problem_of
from fp4core.dispatch.registry import Backend

log = logging.getLogger("fp4core")

#: plans kept per module before the oldest are dropped (distinct M values seen)
MAX_PLANS = 64


def _fused_quant_max_from_env() -> int:
    raw = os.environ.get("FP4CORE_FUSED_QUANT_MAX", "").strip()
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"FP4CORE_FUSED_QUANT_MAX={raw!r}: expected a whole number of input elements "
                         f"(M x K; 0 turns the quantization inside the GEMM off)") from None


#: the largest layer input (M x K elements) whose NVFP4 quantization (dynamic or static scale)
#: runs inside the GEMM when the chosen backend can (``bind_quantizing``); 0 (the default until
#: it is measured on a GPU): never. FP4CORE_FUSED_QUANT_MAX sets it, read at import.
FUSED_QUANT_MAX_ELEMS = _fused_quant_max_from_env()


@dataclasses.dataclass(frozen=True, eq=False)
class LinearPlan:
    """Everything one eager ``Fp4Linear`` call at a given M needs, decided once.

    Attributes:
        signature: (weight signature, selector generation) the plan was made under.
        requested: the backend the module asked for ("auto" or a name).
        backend, tactic: what ``auto`` (or the module's named backend) chose.
        problem: the problem as ``backend.run`` is given it (prepared or plain).
        selected: the problem the selector chose for (for marking a failure).
        weight: the weight operands in ``backend``'s layout (``a``/``a_scale``/``alpha`` unset).
        prepared: the PreparedWeight the choice was made with.
        launch: ``launch(a, a_scale, alpha, out)``, the backend's bound GEMM.
        quantize: ``quantize(x, global_scale, weight_global_scale) -> (a, flat a_scale,
            alpha)``, the activation quantization bound to this M (an
            ``ActivationQuantizer``; its outputs are reused by the next call); None for a
            weight-only plan (the activation goes to the GEMM as it is).
        fused: ``fused(x, global_scale, weight_global_scale, alpha, out)``, the backend's GEMM
            with the quantization inside (``Backend.bind_quantizing``) for inputs of dtype
            ``fused_dtype``; None if not.
    """

    signature: tuple
    requested: str
    backend: Backend
    tactic: Tactic
    problem: Problem
    selected: Problem
    weight: Operands
    prepared: PreparedWeight
    launch: Callable[..., None]
    quantize: Callable[..., tuple] | None
    fused: Callable[..., None] | None = None
    fused_dtype: torch.dtype | None = None

    def run(self, a: torch.Tensor, a_scale: torch.Tensor, alpha: torch.Tensor | None,
            out: torch.Tensor) -> None:
        """The GEMM: ``out (M, N) = alpha * dequant(a) @ dequant(W).T``; a uint8 (M, K/2),
        a_scale flat uint8 scale bytes (weight-only plans: a (M, K) bf16/fp16, a_scale None:
        ``out = alpha * a @ dequant(W).T``). On a backend failure under ``auto`` the backend is
        left out (as ``mm_fp4`` does) and the call is redone by ``selector.run``."""
        try:
            self.launch(a, a_scale, alpha, out)
        except BackendFailedError as exc:
            selector.after_failure(self.requested, self.selected, self.backend, exc)
            w = self.weight
            selector.run(self.selected, Operands(a, a_scale, w.b, w.b_scale, alpha), self.prepared,
                         "auto", out)

    def run_fused(self, x: torch.Tensor, global_scale: torch.Tensor | None, weight_global_scale: torch.Tensor | None,
                  alpha: torch.Tensor | None, out: torch.Tensor) -> None:
        """Quantize ``x`` (M, K) and run the GEMM in one launch (``fused``): static scale
        (``global_scale``, ``alpha``) or dynamic (``weight_global_scale``; alpha computed). On a
        backend failure it is left out as in ``run`` and the call is redone in two steps."""
        try:
            self.fused(x, global_scale, weight_global_scale, alpha, out)
        except BackendFailedError as exc:
            selector.after_failure(self.requested, self.selected, self.backend, exc)
            a, a_scale, computed = self.quantize(x, global_scale, weight_global_scale)
            alpha = alpha if global_scale is not None else computed
            w = self.weight
            selector.run(self.selected, Operands(a, a_scale, w.b, w.b_scale, alpha), self.prepared,
                         "auto", out)


def make_plan(weight_signature: tuple, prepared: PreparedWeight, m: int, fmt: Fp4Format,
              out_dtype: torch.dtype, layout: SfLayout, has_alpha: bool, device: torch.device,
              backend: str, quantize: Callable[..., tuple] | None,
              act_dtype: torch.dtype | None = None, fuse_dtype: torch.dtype | None = None) -> LinearPlan:
    """Choose (backend, tactic) for an (m, N, K) call on ``prepared`` and freeze it, with
    ``quantize`` as the plan's activation quantizer (``act_dtype`` set: a weight-only plan,
    no quantizer). ``fuse_dtype``: the input dtype of an NVFP4 plan that may quantize
    inside the GEMM (asked of the chosen backend when m x K <= ``FUSED_QUANT_MAX_ELEMS``)."""
    selected = problem_of(m, prepared.n, prepared.k, fmt, out_dtype, layout, has_alpha, device, True,
                          act_dtype)
    choice = selector.choose(selected, backend)
    run_problem, ops = selector.weight_for(choice.backend, selected, Operands(None, None, None, None), prepared)
    weight = Operands(None, None, ops.b, ops.b_scale, None, ops.extra)
    # read after choose (tuning may have changed it): the plan is rebuilt when the
    # selector's answer may change (backends, tuning cache or mode, failures)
    sig = (weight_signature, selector.generation)
    launch = choice.backend.bind(run_problem, weight, choice.tactic)
    fused = None
    if fuse_dtype is not None and m * prepared.k <= FUSED_QUANT_MAX_ELEMS:
        try:
            fused = choice.backend.bind_quantizing(run_problem, weight, choice.tactic, fuse_dtype)
        except BackendFailedError as exc:  # an optimisation only: the two steps still run
            log.warning("fp4core: %s could not bind its quantizing launcher for %s (%s); quantizing "
                        "separately", choice.backend.name, run_problem.describe(), exc.__cause__ or exc)
    return LinearPlan(sig, backend, choice.backend, choice.tactic, run_problem, selected, weight, prepared,
                      launch, quantize, fused, fuse_dtype if fused is not None else None)


class LayerPlans:
    """The eager plans of one linear layer, keyed by (M, out_dtype), weight-only plans by
    (M, activation dtype, "w16").

    Args:
        entry_key, entry: the layer's lazily prepared weight (``fp4core.pytorch.ops.new_weight_key``).
        fmt, layout: the weight format and the activations' scale layout (128x4 or 8x4).
        out_features: N.
        canonical: ``canonical(b, b_sf) -> PreparedWeight`` with no backend copies, for a
            weight that changed during CUDA-graph capture (no preparing then).
    """

    def __init__(self, entry_key: int, entry, fmt: Fp4Format, layout: SfLayout, out_features: int,
                 canonical: Callable[..., PreparedWeight]):
        self.entry_key = entry_key
        self.entry, self.fmt, self.layout, self.n = entry, fmt, layout, out_features
        self._canonical = canonical
        self.plans: dict[tuple, LinearPlan] = {}

    def clear(self) -> None:
        """Drop every plan (the weight tensors were replaced or reloaded)."""
        self.plans = {}

    def gemm(self, kernels, x2: torch.Tensor, out_dtype: torch.dtype, weight_fp4: torch.Tensor,
             weight_scale: torch.Tensor, weight_global_scale: torch.Tensor,
             input_global_scale: torch.Tensor, static_alpha: torch.Tensor, static: bool,
             backend: str) -> torch.Tensor:
        """``x2 (M, K) -> (M, N) out_dtype``: quantize x2 and run the GEMM with this M's plan
        (made on first use). ``weight_*`` are the layer's buffers (codes (N, K/2) uint8, 128x4
        scale bytes, float32 (1,) global scale); ``static`` (NVFP4 only) quantizes with
        ``input_global_scale`` and uses ``static_alpha``, else the activations' amax gives the
        scale and alpha is computed on the device. ``kernels`` is the Triton quantization
        module. No argument checks: the caller owns the weight and checked x2's shape."""
        m = x2.shape[0]
        nv = self.fmt is Fp4Format.NVFP4
        static = static and nv
        wsig = (weight_fp4.data_ptr(), weight_scale.data_ptr(), version_counter(weight_fp4), version_counter(weight_scale),
                self.entry.epoch, backend, static)
        plan = self.plans.get((m, out_dtype))
        if plan is None or plan.signature != (wsig, selector.generation):
            plan = self._new_plan(kernels, m, out_dtype, wsig, weight_fp4, weight_scale, backend,
                                  x2.dtype if nv else None)
        if plan.fused is not None and x2.dtype is plan.fused_dtype and not x2.data_ptr() & 15 and x2.is_contiguous():
            out = torch.empty((m, self.n), dtype=out_dtype, device=x2.device)
            if static:
                plan.run_fused(x2, input_global_scale, None, static_alpha, out)
            else:
                plan.run_fused(x2, None, weight_global_scale, None, out)
            return out
        if static:
            a, a_sf, _ = plan.quantize(x2, input_global_scale, None)
            alpha = static_alpha
        else:
            a, a_sf, alpha = plan.quantize(x2, None, weight_global_scale if nv else None)
        out = torch.empty((m, self.n), dtype=out_dtype, device=x2.device)
        plan.run(a, a_sf, alpha, out)
        return out

    def weight_only_gemm(self, a: torch.Tensor, weight_fp4: torch.Tensor, weight_scale: torch.Tensor,
                         alpha: torch.Tensor | None, backend: str, entry) -> torch.Tensor | None:
        """W4A16 ``a (M, K) bf16/fp16 -> (M, N)`` of a's dtype with this M's weight-only plan
        (made on first use): ``alpha * a @ dequant(W).T``. ``entry`` is the layer's lazily
        prepared weight-only weight (``fp4core.pytorch.ops.new_bf16_weight_key``); ``alpha``
        float32 (1,) for NVFP4, None for MXFP4. Returns None when the weight changed during
        CUDA-graph capture (no preparing then): the caller takes the op path this once. No
        argument checks: the caller owns the weight and made ``a`` contiguous."""
        m, dtype = a.shape[0], a.dtype
        wsig = (weight_fp4.data_ptr(), weight_scale.data_ptr(), version_counter(weight_fp4),
                version_counter(weight_scale), entry.epoch, backend, "w16", alpha is not None)
        key = (m, dtype, "w16")
        plan = self.plans.get(key)
        if plan is None or plan.signature != (wsig, selector.generation):
            nv = self.fmt is Fp4Format.NVFP4
            prepared = entry.resolve(weight_fp4, weight_scale, nv, alpha is not None)
            if prepared is None:
                return None
            plan = make_plan(wsig, prepared, m, self.fmt, dtype, SfLayout.layout_128x4, alpha is not None,
                             weight_fp4.device, backend, None, act_dtype=dtype)
            if len(self.plans) >= MAX_PLANS:
                self.plans.clear()
            self.plans[key] = plan
        out = torch.empty((m, self.n), dtype=dtype, device=a.device)
        plan.run(a, None, alpha, out)
        return out

    def _new_plan(self, kernels, m: int, out_dtype: torch.dtype, wsig: tuple, weight_fp4: torch.Tensor,
                  weight_scale: torch.Tensor, backend: str, fuse_dtype: torch.dtype | None) -> LinearPlan:
        nv = self.fmt is Fp4Format.NVFP4
        prepared = self.entry.resolve(weight_fp4, weight_scale, nv, out_dtype,
                                      self.layout is SfLayout.layout_8x4, nv)
        if prepared is None:  # changed during capture: take the canonical weight this once
            prepared = self._canonical(weight_fp4, weight_scale, self.fmt)
        plan = make_plan(wsig, prepared, m, self.fmt, out_dtype, self.layout, nv, weight_fp4.device,
                         backend, kernels.ActivationQuantizer(self.fmt, self.layout), fuse_dtype=fuse_dtype)
        if len(self.plans) >= MAX_PLANS:
            self.plans.clear()
        self.plans[(m, out_dtype)] = plan
        return plan
