"""The eager fast path of ``Fp4Linear``: one decision per (module, M, input dtype), reused.

A model calls each layer with the same few batch sizes. ``LinearPlan`` freezes what a call
needs once (the backend and tactic ``auto`` chose, the problem as that backend sees it, the
weight operands in that backend's layout, and the backend's bound launcher: its ``bind``
hook, or ``run``), so a call is: quantize (one or two Triton launches, alpha on the device, into buffers
the plan reuses), allocate the output, launch. No
argument validation (the module owns the weight; the input was checked by shape), no
``torch.library`` dispatch, no PreparedWeight lookup.

A plan is valid while its ``signature`` matches: the dispatcher's generation (backends,
tuning cache, tuning mode, failures) and the weight's identity and version counters. Under
``torch.compile`` the module takes the custom-op path instead (see ``fp4core.ops``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import torch

from . import api
from .dispatch import dispatcher
from .errors import BackendFailedError
from .formats import Fp4Format
from .hookspec import Tactic
from .layouts import SfLayout
from .prepared import PreparedWeight, weight_for
from .problem import Operands, Problem, problem_of
from .registry import Backend

log = logging.getLogger("fp4core")

#: plans kept per module before the oldest are dropped (distinct M values seen)
MAX_PLANS = 64


@dataclasses.dataclass(frozen=True, eq=False)
class LinearPlan:
    """Everything one eager ``Fp4Linear`` call at a given M needs, decided once.

    Attributes:
        signature: (weight signature, dispatcher generation) the plan was made under.
        requested: the backend the module asked for ("auto" or a name).
        backend, tactic: what ``auto`` (or the module's named backend) chose.
        problem: the problem as ``backend.run`` is given it (prepared or plain).
        selected: the problem the dispatcher chose for (for marking a failure).
        weight: the weight operands in ``backend``'s layout (``a``/``a_scale``/``alpha`` unset).
        prepared: the PreparedWeight the choice was made with.
        launch: ``launch(a, a_scale, alpha, out)``, the backend's bound GEMM.
        quantize: ``quantize(x, global_scale, weight_global_scale) -> (a, flat a_scale,
            alpha)``, the activation quantization bound to this M (an
            ``ActivationQuantizer``; its outputs are reused by the next call).
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
    quantize: Callable[..., tuple]

    def run(self, a: torch.Tensor, a_scale: torch.Tensor, alpha: torch.Tensor | None,
            out: torch.Tensor) -> None:
        """The GEMM: ``out (M, N) = alpha * dequant(a) @ dequant(W).T``; a uint8 (M, K/2),
        a_scale flat uint8 scale bytes. On a backend failure under ``auto`` the backend is
        left out (as ``mm_fp4`` does) and the call is redone by ``fp4core.api.run``."""
        try:
            self.launch(a, a_scale, alpha, out)
        except BackendFailedError as exc:
            w = self.weight
            if not api._may_fall_back(self.requested, self.selected, exc):
                raise
            log.warning("%s; auto leaves %r out for %s from now on", exc, self.backend.name,
                        self.selected.describe())
            dispatcher.mark_failed(self.selected, self.backend.name, str(exc.__cause__ or exc))
            api.run(self.selected, Operands(a, a_scale, w.b, w.b_scale, alpha), self.prepared,
                    "auto", out)


def make_plan(weight_signature: tuple, prepared: PreparedWeight, m: int, fmt: Fp4Format,
              out_dtype: torch.dtype, layout: SfLayout, has_alpha: bool, device: torch.device,
              backend: str, quantize: Callable[..., tuple]) -> LinearPlan:
    """Choose (backend, tactic) for an (m, N, K) call on ``prepared`` and freeze it, with
    ``quantize`` as the plan's activation quantizer."""
    selected = problem_of(m, prepared.n, prepared.k, fmt, out_dtype, layout, has_alpha, device, True)
    choice = dispatcher.choose(selected, backend)
    run_problem, ops = weight_for(choice.backend, selected, Operands(None, None, None, None), prepared)
    weight = Operands(None, None, ops.b, ops.b_scale, None, ops.extra)
    # read after choose (tuning may have changed it): the plan is rebuilt when the
    # dispatcher's answer may change (backends, tuning cache or mode, failures)
    sig = (weight_signature, dispatcher.generation)
    launch = choice.backend.bind(run_problem, weight, choice.tactic)
    return LinearPlan(sig, backend, choice.backend, choice.tactic, run_problem, selected, weight, prepared,
                      launch, quantize)
