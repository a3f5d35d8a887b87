"""The ``cudnn`` backend's hooks (entry point ``fp4_cudnn.plugin:CudnnBackend``).

SM100+: the native block-scaled FP4 cuDNN graph. SM80-SM90: one fused Triton launch
dequantizes A and B to bf16 into cached buffers, then a cuDNN bf16 matmul graph.

Weight-only calls (``mm_bf16_fp4``, bf16 activations, SM80-SM90): the same launch decodes the
weight alone and the bf16 graph takes the activation as it is, with alpha in the fp32
epilogue. Checked on an H100 (2026-12-06) but 0.4x bf16 at M <= 128 (the weight is decoded
to bf16 every call), so its priority keeps it behind the fused kernels until tuning says otherwise.

Tactics are cuDNN execution plans of one of the problem's graph variants,
``CudnnTactic(graph=variant, plan=index, engine=cuDNN's plan name)``:

* "plain" (SM80-SM90): the bare bf16 matmul; alpha, when given, is folded into A's
  dequantization (one extra rounding of alpha * a to bf16, relative 2^-9 per element). This is
  the only graph for which cuDNN offers its cuBLASLt engine, which matches cuBLAS.
* "epilogue" (SM80-SM90, only with alpha): alpha applied exactly, in fp32, as a pointwise
  multiply fused after the matmul. Set FP4_CUDNN_EXACT_ALPHA=1 to use only this variant.
* "native" (SM100+): the block-scaled FP4 graph with alpha in its epilogue.

Graphs (with their enumerated and built plans) are cached per (device, path, shape, output
dtype, alpha, variant[, format]).
"""

from __future__ import annotations

import dataclasses
import threading

import torch

from fp4core import kit
from fp4core.env import env_flag
from fp4core.dispatch.hooks import BackendInfo, Support, Tactic, hookimpl
from fp4core.dispatch.problem import Operands, Problem

from . import __version__, resources
from .dequant import dequantize_pair
from .graphs import GraphRefused, PlannedGraph, bf16_matmul_graph, native_fp4_graph
from .support import PATH_NATIVE, path_for, supports

ENV_EXACT_ALPHA = "FP4_CUDNN_EXACT_ALPHA"
PLAIN, EPILOGUE, NATIVE = "plain", "epilogue", "native"


@dataclasses.dataclass(frozen=True)
class CudnnTactic(Tactic):
    """One cuDNN execution plan of one graph variant; every field None (label "default") is
    the default variant's first plan that builds.

    Fields:
        graph: the graph variant, "plain", "epilogue" or "native" (see the module docstring);
            None = the problem's default variant. A variant the problem does not allow (e.g.
            a cached "plain" tactic after FP4_CUDNN_EXACT_ALPHA=1) runs as the default tactic.
        plan: index of the plan in cuDNN's heuristic list (modes A then FALLBACK) of that
            graph; None = the first plan that builds.
        engine: cuDNN's name of the plan (engine and knobs). It wins over ``plan`` when the
            graph (e.g. another M of the same tuning bucket) lists it at another index; see
            ``PlannedGraph.index_of``.
    """

    graph: str | None = None
    plan: int | None = None
    engine: str | None = None


def _device_index(problem: Problem) -> int:
    idx = problem.device.index
    return torch.cuda.current_device() if idx is None else idx


def graph_key(problem: Problem, variant: str = PLAIN) -> tuple:
    """What a cached graph depends on. The bf16 graphs do not depend on the FP4 format or the
    scale layout (the dequantization kernel absorbs both), so those share them."""
    path = path_for(problem.device.sm)
    key = (_device_index(problem), path, problem.m, problem.n, problem.k, problem.out_dtype,
           problem.has_alpha, variant)
    return key + ((problem.fmt,) if path == PATH_NATIVE else ())


def variants(problem: Problem) -> list[str]:
    """The graph variants whose plans are this problem's tactics, the default first."""
    if path_for(problem.device.sm) == PATH_NATIVE:
        return [NATIVE]
    if not problem.has_alpha:
        return [PLAIN]
    if env_flag(ENV_EXACT_ALPHA) or problem.act_dtype is not None:
        # weight-only: alpha cannot be folded into a dequantization of A (there is none)
        return [EPILOGUE]
    return [PLAIN, EPILOGUE]


class CudnnBackend:
    """fp4core backend "cudnn". See the module docstring."""

    def __init__(self):
        self._graphs: dict[tuple, PlannedGraph | GraphRefused] = {}
        self._plan_of: dict[tuple, int] = {}   # (graph key, plan, engine) -> plan index
        self._lock = threading.Lock()

    # -- metadata / support ----------------------------------------------------------------
    @hookimpl
    def backend_info(self) -> BackendInfo:
        return BackendInfo(
            name="cudnn", version=__version__, package="fp4-cudnn",
            description=("cuDNN: block-scaled FP4 graph on SM100+; fused FP4->bf16 dequantization "
                         "+ cuDNN bf16 matmul plans on SM80-SM90; tactics = execution plans"),
            targets=("sm80", "sm90", "sm100", "sm120"), verified=("sm90",),
            priority={"decode": 0, "small": 5, "medium": 20, "large": 30,
                      "sm100:decode": 30, "sm100:small": 30, "sm100:medium": 40, "sm100:large": 40},
            tactic_type=CudnnTactic,
            activations=("fp4", "bf16"))

    @hookimpl
    def supports(self, problem: Problem) -> Support:
        return supports(problem)

    # -- graphs and plans ------------------------------------------------------------------
    def planned_graph(self, problem: Problem, variant: str = PLAIN) -> PlannedGraph:
        """The cached, validated graph ``variant`` of ``problem`` with its plans enumerated.

        Raises GraphRefused when cuDNN refuses it (the refusal is cached too), and
        resources.CaptureError when it would have to be built inside CUDA-graph capture.
        """
        key = graph_key(problem, variant)
        entry = self._graphs.get(key)
        if entry is None:
            if torch.cuda.is_current_stream_capturing():
                raise resources.CaptureError(
                    f"fp4-cudnn: no cuDNN graph for {problem.describe()} yet; run it once before "
                    f"capturing a CUDA graph")
            with self._lock:
                entry = self._graphs.get(key)
                if entry is None:
                    entry = self._build(problem, variant)
                    self._graphs[key] = entry
        if isinstance(entry, GraphRefused):
            raise entry
        return entry

    def _build(self, problem: Problem, variant: str) -> PlannedGraph | GraphRefused:
        dev = _device_index(problem)
        h = resources.graph_handle(dev)
        m, n, k = problem.m, problem.n, problem.k
        try:
            with torch.cuda.device(dev):
                if variant == NATIVE:
                    spec = native_fp4_graph(m, n, k, problem.fmt, problem.out_dtype, problem.has_alpha, h)
                else:
                    spec = bf16_matmul_graph(m, n, k, problem.out_dtype, variant == EPILOGUE, h)
                return PlannedGraph.create(spec)
        except GraphRefused as exc:
            return exc
        except Exception as exc:  # a frontend error while declaring the graph
            return GraphRefused("construct", f"{type(exc).__name__}: {exc}")

    def _plan_index(self, problem: Problem, variant: str, pg: PlannedGraph, tactic: CudnnTactic) -> int:
        key = (graph_key(problem, variant), tactic.plan, tactic.engine)
        index = self._plan_of.get(key)
        if index is None:
            if torch.cuda.is_current_stream_capturing():
                raise resources.CaptureError(
                    f"fp4-cudnn: plan {tactic} of {problem.describe()} is not built yet; run it once "
                    f"before capturing a CUDA graph")
            index = pg.index_of(tactic) if tactic.plan is not None else pg.first_buildable()
            pg.ensure_built(index)
            self._plan_of[key] = index
        return index

    # -- hooks ------------------------------------------------------------------------------
    @hookimpl
    def tactics(self, problem: Problem) -> list[CudnnTactic]:
        """Every execution plan of every graph variant, the default variant first and its
        first plan that builds first; then cuDNN's heuristic order. Plans are built when a
        tactic first runs."""
        if problem.m is None:
            return [CudnnTactic()]
        out: list[CudnnTactic] = []
        refusals = []
        for variant in variants(problem):
            try:
                pg = self.planned_graph(problem, variant)
                order = list(range(pg.count))
                if not out:  # the overall default: a plan that builds
                    first = pg.first_buildable()
                    order = [first] + [i for i in order if i != first]
            except GraphRefused as exc:
                refusals.append(f"{variant}: {exc}")
                continue
            out += [CudnnTactic(graph=variant, plan=i, engine=pg.names[i]) for i in order]
        if not out:
            raise GraphRefused("build_plan", "; ".join(refusals))
        return out

    @hookimpl
    def run(self, problem: Problem, operands: Operands, tactic: CudnnTactic, out: torch.Tensor) -> None:
        """``out (M, N) = alpha * dequant(A) @ dequant(B)^T`` on the current stream."""
        if out.data_ptr() % 16:
            raise ValueError("fp4-cudnn: out must be 16-byte aligned")
        allowed = variants(problem)
        variant = tactic.graph or allowed[0]
        if variant not in allowed:  # e.g. a cached "plain" tactic after FP4_CUDNN_EXACT_ALPHA=1
            variant, tactic = allowed[0], CudnnTactic()
        dev = out.device.index
        pg = self.planned_graph(problem, variant)
        index = self._plan_index(problem, variant, pg, tactic)
        ws_bytes = pg.ensure_built(index)
        h = resources.handle(dev, kit.raw_stream(dev))
        m, n, k = problem.m, problem.n, problem.k
        if variant == NATIVE:
            ptrs = {"A": operands.a.data_ptr(), "B": operands.b.data_ptr(),
                    "SFA": operands.a_scale.data_ptr(), "SFB": operands.b_scale.data_ptr()}
        elif problem.act_dtype is not None:  # weight-only: decode B alone, A goes in as it is
            a = operands.a
            if not a.is_contiguous() or a.data_ptr() % 16:
                raise ValueError("fp4-cudnn: weight-only activations must be contiguous and 16-byte aligned")
            b_buf = resources.buffer(dev, "b_bf16", n * k * 2)
            dequantize_pair(None, None, None, problem.a_sf_layout, operands.b, operands.b_scale,
                            b_buf[: n * k * 2].view(torch.bfloat16).view(n, k), problem.fmt)
            ptrs = {"A": a.data_ptr(), "B": b_buf.data_ptr()}
        else:
            a_buf = resources.buffer(dev, "a_bf16", m * k * 2)
            b_buf = resources.buffer(dev, "b_bf16", n * k * 2)
            fold = operands.alpha if (problem.has_alpha and variant == PLAIN) else None
            dequantize_pair(operands.a, operands.a_scale, a_buf[: m * k * 2].view(torch.bfloat16).view(m, k),
                            problem.a_sf_layout, operands.b, operands.b_scale,
                            b_buf[: n * k * 2].view(torch.bfloat16).view(n, k), problem.fmt, alpha_a=fold)
            ptrs = {"A": a_buf.data_ptr(), "B": b_buf.data_ptr()}
        if "alpha" in pg.uids:
            ptrs["alpha"] = operands.alpha.data_ptr()
        ws = resources.buffer(dev, "cudnn_workspace", ws_bytes) if ws_bytes else None
        pg.execute(index, ptrs, out.data_ptr(), ws, h)
