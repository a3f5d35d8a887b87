"""The layer benchmark (``fp4core bench --layer``): what a model pays per linear layer.

For each (N, K) layer and batch size M it builds a bf16 ``nn.Linear`` with random weights and
the ``Fp4Linear`` variants made from it (NVFP4 with the dynamic activation scale, NVFP4 with a
calibrated static scale, MXFP4), and times, in the same process:

* ``eager``: back-to-back ``layer(x)`` calls (host time included, as an eager model pays it);
* ``graph``: the same calls captured in one CUDA graph and replayed (GPU time only);
* ``host``: the host time of one call (submit loop without waiting for the GPU), so that
  ``eager - graph`` and ``host`` show what the Python side costs above the kernels.

Ratios are against the bf16 layer in the same run (> 1 is faster). ``err`` is the relative
Frobenius error of the FP4 layer's output against the bf16 layer's on the same input.
Layers rotate through as many weight copies as keep the set larger than the L2 cache, as
consecutive layers of a model do. CPU runs time eager calls only.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch
from torch import nn

from fp4core.dispatch.timing import CudaEventTimer, HostTimer, graph_replay_us, median, rotation_sets

#: Fp4Linear variants: (label, format, act_scale); act_scale "weight-only" makes a W4A16 layer
#: (``activations="bf16"``), "tinygemm" torch's int4 weight-only kernel (the W4A16 baseline)
VARIANTS = (("nvfp4", "nvfp4", "dynamic"), ("nvfp4-static", "nvfp4", "static"), ("mxfp4", "mxfp4", "dynamic"))
W4A16_VARIANTS = (("w4a16-nvfp4", "nvfp4", "weight-only"), ("w4a16-mxfp4", "mxfp4", "weight-only"),
                  ("tinygemm-int4", "int4", "tinygemm"))
ALL_VARIANTS = VARIANTS + W4A16_VARIANTS


@dataclasses.dataclass
class LayerRow:
    """One (layer, M, variant): times in us, ratios against the bf16 layer of the same run."""

    m: int
    n: int
    k: int
    variant: str
    eager_us: float = 0.0
    graph_us: float = 0.0
    host_us: float = 0.0
    eager_vs_bf16: float = 0.0
    graph_vs_bf16: float = 0.0
    rel_err: float = 0.0  # against the bf16 layer's output
    backend: str = ""  # what auto chose (FP4 variants)
    error: str = ""


def _host_us(call: Callable[[], object], calls: int = 50) -> float:
    """Host time per call: the submit loop alone (the GPU may still be running)."""
    call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        call()
    us = (time.perf_counter() - t0) * 1e6 / calls
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return us


def _chosen_backend(layer: nn.Module, m: int) -> str:
    plans = getattr(layer, "_plans", {})
    for key, plan in plans.items():  # (M, dtype) or, weight-only, (M, dtype, "w16")
        if key[0] == m:
            return f"{plan.backend.name}"
    return ""


def run_layer_bench(layers: list[tuple[int, int]], ms: list[int], variants=VARIANTS,
                    dtype: torch.dtype = torch.bfloat16, graph: bool = True,
                    progress: Callable[[str], None] = lambda s: None) -> list[LayerRow]:
    """Benchmark every (N, K) in ``layers`` at every M in ``ms``; see the module docstring.

    Args:
        layers: (out_features N, in_features K) of each layer.
        ms: batch sizes (rows of the input).
        variants: Fp4Linear variants, a subset of ``VARIANTS``.
        dtype: the activation and bf16-layer dtype (torch.bfloat16 or torch.float16).
        graph: also time CUDA-graph replays (CUDA only).
        progress: called with one line per timed row.
    Returns:
        One LayerRow per (layer, M, variant), the bf16 layer first (variant "bf16").
    """
    from fp4core.pytorch.nn import calibrate
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    graph = graph and cuda
    eager_timer = CudaEventTimer(lead=False) if cuda else HostTimer()
    rows: list[LayerRow] = []
    for n, k in layers:
        copies = rotation_sets(2 * n * k, cuda, max_sets=8)
        torch.manual_seed(n * 31 + k)
        bf16 = [nn.Linear(k, n, bias=False, device=device, dtype=dtype) for _ in range(copies)]
        fp4, broken = {}, {}
        for label, fmt, act in variants:
            try:
                fp4[label] = [_variant_layer(lin, fmt, act) for lin in bf16]
            except Exception as exc:  # e.g. tinygemm off CUDA or on an unsupported shape
                broken[label] = f"{type(exc).__name__}: {exc}"
                continue
            if act == "static":  # calibrate on inputs like the benchmark's
                with torch.no_grad(), calibrate(nn.ModuleList(fp4[label])):
                    for lin in fp4[label]:
                        lin(torch.randn(64, k, device=device, dtype=dtype))
        for m in ms:
            xs = [torch.randn(m, k, device=device, dtype=dtype) for _ in range(copies)]
            with torch.no_grad():
                ref = bf16[0](xs[0]).float()
                base = _time_layers(bf16, xs, eager_timer, graph)
                rows.append(LayerRow(m, n, k, "bf16", *base, 1.0, 1.0 if graph else 0.0))
                progress(f"{m}x{n}x{k} bf16 nn.Linear: eager {base[0]:.1f} us, graph {base[1]:.1f} us, "
                         f"host {base[2]:.1f} us")
                for label, why in broken.items():
                    rows.append(LayerRow(m, n, k, label, error=why))
                    progress(f"{m}x{n}x{k} {label}: {why}")
                for label, mods in fp4.items():
                    row = LayerRow(m, n, k, label)
                    try:
                        y = mods[0](xs[0]).float()
                        row.rel_err = float((y - ref).norm() / ref.norm().clamp_min(1e-30))
                        row.eager_us, row.graph_us, row.host_us = _time_layers(mods, xs, eager_timer, graph)
                        row.eager_vs_bf16 = base[0] / row.eager_us
                        row.graph_vs_bf16 = base[1] / row.graph_us if graph else 0.0
                        row.backend = _chosen_backend(mods[0], m)
                    except Exception as exc:  # reported; the sweep goes on
                        row.error = f"{type(exc).__name__}: {exc}"
                    progress(f"{m}x{n}x{k} {label}: " + (row.error or
                             f"eager {row.eager_us:.1f} us ({row.eager_vs_bf16:.2f}x), graph "
                             f"{row.graph_us:.1f} us ({row.graph_vs_bf16:.2f}x), host {row.host_us:.1f} us, "
                             f"err {row.rel_err:.3f} [{row.backend}]"))
                    rows.append(row)
            del xs
        del bf16, fp4
        if cuda:
            torch.cuda.empty_cache()
    return rows


def _variant_layer(lin: nn.Linear, fmt: str, act: str) -> nn.Module:
    """One benchmark layer made from the bf16 ``lin`` (see VARIANTS / W4A16_VARIANTS)."""
    from fp4core.pytorch.nn import Fp4Linear
    if act == "tinygemm":
        from fp4core.tools.tinygemm import TinyGemmLinear
        return TinyGemmLinear(lin)
    if act == "weight-only":
        return Fp4Linear.from_linear(lin, format=fmt, activations="bf16")
    return Fp4Linear.from_linear(lin, format=fmt)


def _time_layers(mods: list[nn.Module], xs: list[torch.Tensor], eager_timer, graph: bool
                 ) -> tuple[float, float, float]:
    run = lambda i: mods[i](xs[i])
    eager = median(eager_timer.measure(run, len(mods)))
    g = graph_replay_us(run, len(mods)) if graph else 0.0
    host = _host_us(lambda: run(0))
    return eager, g, host


def format_rows(rows: list[LayerRow]) -> str:
    """The rows as a fixed-width table."""
    lines = ["eager = back-to-back calls (host included); graph = CUDA-graph replay (GPU only); host = "
             "submit time of one call; x = bf16 layer time / this time (same run); err vs the bf16 layer",
             f"{'M':>6s} {'N':>6s} {'K':>6s}  {'variant':13s} {'eager us':>9s} {'x':>6s} {'graph us':>9s} "
             f"{'x':>6s} {'host us':>8s} {'err':>7s}  backend"]
    for r in rows:
        if r.error:
            lines.append(f"{r.m:6d} {r.n:6d} {r.k:6d}  {r.variant:13s} FAILED: {r.error}")
            continue
        lines.append(f"{r.m:6d} {r.n:6d} {r.k:6d}  {r.variant:13s} {r.eager_us:9.1f} {r.eager_vs_bf16:5.2f}x "
                     f"{r.graph_us:9.1f} {r.graph_vs_bf16:5.2f}x {r.host_us:8.1f} {r.rel_err:7.4f}  {r.backend}")
    return "\n".join(lines)


def tune_layers(layers: list[tuple[int, int]], ms: list[int], variants=VARIANTS,
                progress: Callable[[str], None] = lambda s: None) -> None:
    """Tune ``auto`` for the problems the layers will run (prepared weight, bf16 out, 128x4
    activation scales, alpha for NVFP4), so the benchmark times tuned choices. Results go
    to the tuning cache like ``fp4core tune``'s."""
    from fp4core import api
    device = "cuda" if torch.cuda.is_available() else "cpu"
    formats = sorted({fmt for _, fmt, act in variants if act not in ("weight-only", "tinygemm")})
    problems = [api.make_problem(m, n, k, use_nvfp4=fmt == "nvfp4", has_alpha=fmt == "nvfp4",
                                 prepared=True, device=device)
                for n, k in layers for m in ms for fmt in formats]
    for fmt in sorted({fmt for _, fmt, act in variants if act == "weight-only"}):
        problems += [api.make_problem(m, n, k, use_nvfp4=fmt == "nvfp4", has_alpha=fmt == "nvfp4",
                                      prepared=True, device=device, act_dtype=torch.bfloat16)
                     for n, k in layers for m in ms]
    for exp in api.tune(problems, verbose=False):
        c = exp.choice
        progress(f"tuned {exp.problem.describe()}: {c.backend.name if c else 'none'} ({c.source if c else exp.error})")
