"""cuDNN graphs of this backend and their execution plans.

Two graphs, both ``out (1, M, N) = alpha * A (1, M, K) @ B (1, K, N)`` with fp32 compute:

* ``bf16_matmul_graph`` (SM80-SM90): A and B are the bf16 buffers the dequantization kernel
  wrote; B is the (N, K) row-major weight described as a (1, K, N) tensor with strides
  (K*N, 1, K). Two variants: "epilogue" fuses alpha as a pointwise multiply after the
  matmul; "plain" is the matmul alone (alpha, if any, was folded into A by the
  dequantization). Measured on H100 / cuDNN 9.19: only the plain graph is offered cuDNN's
  cuBLASLt engine (eng0), which matches cuBLAS; with the epilogue the best plan is 5-25%
  slower (README.md).
* ``native_fp4_graph`` (SM100+): FP4_E2M1 operands, each through ``block_scale_dequantize``
  with FP8_E4M3 (NVFP4, blocks of 16) or FP8_E8M0 (MXFP4, blocks of 32) scales in the
  ``F8_128x4`` reordering, declared at their padded extents, then matmul, then alpha.

``PlannedGraph`` owns one built graph: the execution plans are enumerated once
(``create_execution_plans`` with heuristics A then FALLBACK), each plan is built on first use
and kept, and ``execute`` runs one plan index on a handle's stream.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import TYPE_CHECKING, Any

import torch

from fp4core.formats.fp4 import Fp4Format
from fp4core.formats.layouts import SfLayout, padded_scale_shape

from .env import cudnn_module

if TYPE_CHECKING:
    from .plugin import CudnnTactic

log = logging.getLogger("fp4core.cudnn")

#: Stages of graph construction, in order; a refusal names the stage it happened in.
STAGES = ("construct", "validate", "build_operation_graph", "create_execution_plans",
          "check_support", "build_plan")


class GraphRefused(RuntimeError):
    """cuDNN refused the graph. ``stage`` is one of STAGES; the message is cuDNN's."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"cuDNN refused the graph at {stage}: {message}")
        self.stage = stage
        self.message = message


def _dtype(cudnn, torch_dtype: torch.dtype):
    return {torch.bfloat16: cudnn.data_type.BFLOAT16, torch.float16: cudnn.data_type.HALF,
            torch.float32: cudnn.data_type.FLOAT}[torch_dtype]


@dataclasses.dataclass
class GraphSpec:
    """A graph before it is handed to cuDNN: the pygraph plus the tensors callers bind."""

    graph: Any
    inputs: dict[str, Any]   # name -> cudnn tensor (A, B, SFA, SFB, alpha)
    output: Any


def bf16_matmul_graph(m: int, n: int, k: int, out_dtype: torch.dtype, alpha_epilogue: bool,
                      handle) -> GraphSpec:
    """``out (M, N) = [alpha *] A (M, K) @ B (N, K)^T`` on bf16 buffers, fp32 accumulation.

    Bind: "A" bf16 (M, K) row-major, "B" bf16 (N, K) row-major, "alpha" fp32 (1,) when
    ``alpha_epilogue``, and the output (M, N) of ``out_dtype``, row-major.
    """
    cudnn = cudnn_module()
    g = cudnn.pygraph(io_data_type=cudnn.data_type.BFLOAT16,
                      intermediate_data_type=cudnn.data_type.FLOAT,
                      compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    a = g.tensor(name="A", dim=[1, m, k], stride=[m * k, k, 1], data_type=cudnn.data_type.BFLOAT16)
    # The weight is (N, K) row-major; the matmul wants (K, N): same bytes, transposed strides.
    b = g.tensor(name="B", dim=[1, k, n], stride=[k * n, 1, k], data_type=cudnn.data_type.BFLOAT16)
    return _finish(cudnn, g, {"A": a, "B": b}, g.matmul(a, b, compute_data_type=cudnn.data_type.FLOAT,
                                                         name="mm"),
                   m, n, out_dtype, alpha_epilogue)


def native_fp4_graph(m: int, n: int, k: int, fmt: Fp4Format, out_dtype: torch.dtype,
                     has_alpha: bool, handle) -> GraphSpec:
    """The block-scaled FP4 graph (SM100+): dequantize in the matmul, fp32 accumulation.

    Bind: "A" uint8 (M, K/2) and "B" uint8 (N, K/2) packed E2M1 (row-major, K contiguous),
    "SFA" / "SFB" the flat 128x4 scale bytes of A (M rows) and B (N rows), "alpha" fp32 (1,)
    when ``has_alpha``, and the output (M, N) of ``out_dtype``.
    """
    cudnn = cudnn_module()
    bs = fmt.block_size
    sf_type = cudnn.data_type.FP8_E4M3 if fmt is Fp4Format.NVFP4 else cudnn.data_type.FP8_E8M0
    m_pad, kb_pad = padded_scale_shape(m, k // bs, SfLayout.layout_128x4)
    n_pad, _ = padded_scale_shape(n, k // bs, SfLayout.layout_128x4)
    g = cudnn.pygraph(io_data_type=_dtype(cudnn, out_dtype),
                      intermediate_data_type=cudnn.data_type.FLOAT,
                      compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    # FP4 tensors are declared in elements (K values), not in packed bytes.
    a = g.tensor(name="A", dim=[1, m, k], stride=[m * k, k, 1], data_type=cudnn.data_type.FP4_E2M1)
    b = g.tensor(name="B", dim=[1, k, n], stride=[k * n, 1, k], data_type=cudnn.data_type.FP4_E2M1)
    # Scale tensors at their padded extents (rows to 128, blocks to 4), in the F8_128x4 order
    # that fp4core's 128x4 layout is; SFB is declared transposed like B.
    sfa = g.tensor(name="SFA", dim=[1, m_pad, kb_pad], stride=[m_pad * kb_pad, kb_pad, 1],
                   data_type=sf_type, reordering_type=cudnn.tensor_reordering.F8_128x4)
    sfb = g.tensor(name="SFB", dim=[1, kb_pad, n_pad], stride=[kb_pad * n_pad, 1, kb_pad],
                   data_type=sf_type, reordering_type=cudnn.tensor_reordering.F8_128x4)
    a_deq = g.block_scale_dequantize(input=a, descale=sfa, block_size=[1, bs], name="dq_a")
    b_deq = g.block_scale_dequantize(input=b, descale=sfb, block_size=[bs, 1], name="dq_b")
    mm = g.matmul(a_deq, b_deq, compute_data_type=cudnn.data_type.FLOAT, name="mm")
    return _finish(cudnn, g, {"A": a, "B": b, "SFA": sfa, "SFB": sfb}, mm, m, n, out_dtype, has_alpha)


def _finish(cudnn, g, inputs: dict, mm, m: int, n: int, out_dtype: torch.dtype,
            has_alpha: bool) -> GraphSpec:
    """Append the alpha epilogue (a broadcast (1,1,1) fp32 multiply) and mark the output."""
    if has_alpha:
        mm.set_data_type(cudnn.data_type.FLOAT)  # keep the product fp32 until alpha is applied
        alpha = g.tensor(name="alpha", dim=[1, 1, 1], stride=[1, 1, 1], data_type=cudnn.data_type.FLOAT)
        inputs["alpha"] = alpha
        out = g.mul(a=mm, b=alpha, compute_data_type=cudnn.data_type.FLOAT, name="alpha_mul")
    else:
        out = mm
    out.set_output(True).set_data_type(_dtype(cudnn, out_dtype))
    out.set_dim([1, m, n]).set_stride([m * n, n, 1])
    return GraphSpec(g, inputs, out)


class PlannedGraph:
    """A validated cuDNN graph with its execution plans enumerated once.

    Plans are built lazily (``ensure_built``) and kept: building one can take tens of
    milliseconds (some engines compile at runtime), so it happens on the first call or while
    tuning, never again. Not for use from several threads at once.
    """

    def __init__(self, spec: GraphSpec):
        self.spec = spec
        self._lock = threading.Lock()
        self._built: dict[int, int] = {}        # plan index -> workspace bytes
        self._failed: dict[int, str] = {}       # plan index -> why it did not build
        self._names: list[str] | None = None
        self.count = 0
        self.uids = {name: t.get_uid() for name, t in spec.inputs.items()}
        self.out_uid = spec.output.get_uid()

    @classmethod
    def create(cls, spec: GraphSpec) -> "PlannedGraph":
        """Validate, lower and enumerate plans; raise GraphRefused naming the stage."""
        cudnn = cudnn_module()
        g = spec.graph
        for stage, step in (("validate", g.validate),
                            ("build_operation_graph", g.build_operation_graph),
                            ("create_execution_plans",
                             lambda: g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])),
                            ("check_support", g.check_support)):
            try:
                step()
            except Exception as exc:
                raise GraphRefused(stage, f"{type(exc).__name__}: {exc}") from exc
        planned = cls(spec)
        planned.count = int(g.get_execution_plan_count())
        if planned.count == 0:
            raise GraphRefused("create_execution_plans", "no execution plan was proposed")
        return planned

    @property
    def names(self) -> list[str]:
        """cuDNN's name of every plan (engine and knobs), by index."""
        if self._names is None:
            names = []
            for i in range(self.count):
                try:
                    names.append(str(self.spec.graph.get_plan_name_at_index(i)))
                except Exception:  # a name is a label only; never fail for it
                    names.append(f"plan{i}")
            self._names = names
        return self._names

    def ensure_built(self, index: int) -> int:
        """Build plan ``index`` once; return its workspace bytes. Raises GraphRefused."""
        ws = self._built.get(index)
        if ws is not None:
            return ws
        if index in self._failed:
            raise GraphRefused("build_plan", self._failed[index])
        if not 0 <= index < self.count:
            raise IndexError(f"plan index {index} out of range: this graph has {self.count} plans")
        with self._lock:
            g = self.spec.graph
            try:
                g.build_plan_at_index(index)
                ws = int(g.get_workspace_size_plan_at_index(index))
            except Exception as exc:
                self._failed[index] = f"plan {index} ({self.names[index]}): {type(exc).__name__}: {exc}"
                raise GraphRefused("build_plan", self._failed[index]) from exc
            self._built[index] = ws
            return ws

    def first_buildable(self) -> int:
        """The heuristics' first plan that builds (cuDNN's default choice)."""
        errors = []
        for i in range(self.count):
            try:
                self.ensure_built(i)
                return i
            except GraphRefused as exc:
                errors.append(exc.message)
        raise GraphRefused("build_plan", "no plan could be built: " + "; ".join(errors))

    def index_of(self, tactic: CudnnTactic) -> int:
        """The plan a tactic names. A tactic tuned on another M of the same bucket names a
        plan of another graph: match it by engine name first, then by index, else default."""
        name, index = tactic.engine, tactic.plan
        if name is not None:
            names = self.names
            if isinstance(index, int) and 0 <= index < self.count and names[index] == name:
                return index
            if name in names:
                return names.index(name)
        if isinstance(index, int) and 0 <= index < self.count and index not in self._failed:
            return index
        return self.first_buildable()

    def execute(self, index: int, pointers: dict[str, int], out_ptr: int,
                workspace: torch.Tensor | None, handle) -> None:
        """Run plan ``index`` (already built) on ``handle``'s stream.

        ``pointers`` maps input names ("A", "B", "SFA", "SFB", "alpha") to device addresses;
        the graph's declarations say what the bytes mean. ``workspace`` is a contiguous uint8
        buffer of at least the plan's workspace size, or None when it needs none.
        """
        pack = {self.uids[name]: ptr for name, ptr in pointers.items()}
        pack[self.out_uid] = out_ptr
        self.spec.graph.execute_plan_at_index(pack, workspace, index=index, handle=handle)
