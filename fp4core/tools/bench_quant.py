"""Activation-quantization benchmark (``fp4core bench --quantize``).

Times ``fp4core.quantize_fp4`` (the Triton kernels on CUDA) per (M, K) and variant (NVFP4
with a given global scale, NVFP4 with ``global_scale="auto"`` (amax pass + quantization),
MXFP4), beside the torch reference quantizer and a device-to-device copy measured in the same
run. Two times per row: ``eager`` (back-to-back Python calls: includes the host overhead, which
bounds small shapes) and, on CUDA, ``graph`` (one call per input set captured in a CUDA graph
and replayed: the GPU time). Bandwidth counts the minimal traffic (input read once, codes and
scales written) over the graph time; ``copy %`` compares it with a device-to-device copy's
(read + write) bandwidth on a 1 GiB buffer.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import torch

from fp4core.formats.layouts import padded_scale_shape
from fp4core.dispatch.timing import copy_bandwidth_gbps, default_timer, graph_replay_us, median, rotation_sets

VARIANTS = ("nvfp4", "nvfp4-auto", "mxfp4")


@dataclasses.dataclass
class QuantRow:
    m: int
    k: int
    variant: str
    impl: str  # "kernel" or "torch-ref"
    median_us: float = 0.0  # eager
    graph_us: float = 0.0  # GPU time from CUDA-graph replay (0 on CPU)
    gbps: float = 0.0
    copy_pct: float = 0.0
    error: str = ""


def traffic_bytes(m: int, k: int, variant: str, in_bytes: int = 2) -> int:
    """Input read once + packed codes + 128x4 scale bytes written."""
    block = 32 if variant == "mxfp4" else 16
    prow, pcol = padded_scale_shape(m, k // block, "128x4")
    return m * k * in_bytes + m * k // 2 + prow * pcol


def _call(variant: str, gs: torch.Tensor) -> Callable[[torch.Tensor], object]:
    from fp4core.pytorch.ops import quantize_fp4
    if variant == "nvfp4":
        return lambda x: quantize_fp4(x, "nvfp4", "128x4", gs)
    if variant == "nvfp4-auto":
        return lambda x: quantize_fp4(x, "nvfp4", "128x4", "auto")
    return lambda x: quantize_fp4(x, "mxfp4", "128x4", None)


def run_quant_bench(shapes: list[tuple[int, int]], dtype: torch.dtype = torch.bfloat16,
                    variants=VARIANTS, reference: bool = True,
                    progress: Callable[[str], None] = lambda s: None) -> tuple[list[QuantRow], float]:
    """Benchmark (M, K) shapes; returns the rows and the copy bandwidth (GB/s, 0 on CPU)."""
    from fp4core.formats.kernels import ENV_QUANT_KERNEL, quantize_kernels
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    copy_gbps = copy_bandwidth_gbps()
    if cuda:
        progress(f"device copy: {copy_gbps:.0f} GB/s (read + write, 1 GiB)")
    impls = [("kernel", True)] if cuda and quantize_kernels() is not None else []
    if reference or not impls:
        impls.append(("torch-ref", False))
    rows: list[QuantRow] = []
    es = torch.finfo(dtype).bits // 8
    for m, k in shapes:
        n_sets = rotation_sets(m * k * es, cuda, max_sets=8)
        xs = [torch.randn(m, k, device=device, dtype=dtype) for _ in range(n_sets)]
        gs = torch.tensor([1.0], device=device)
        for variant in variants:
            fn = _call(variant, gs)
            nbytes = traffic_bytes(m, k, variant, es)
            for impl, use_kernel in impls:
                row = QuantRow(m, k, variant, impl)
                prev = os.environ.get(ENV_QUANT_KERNEL)
                if not use_kernel:
                    os.environ[ENV_QUANT_KERNEL] = "torch"
                try:
                    row.median_us = median(default_timer(cuda).measure(lambda i: fn(xs[i]), n_sets))
                    if cuda and use_kernel:
                        row.graph_us = graph_replay_us(lambda i: fn(xs[i]), len(xs))
                    row.gbps = nbytes / (row.graph_us or row.median_us) / 1e3
                    row.copy_pct = 100.0 * row.gbps / copy_gbps if copy_gbps else 0.0
                except Exception as exc:  # reported, the sweep goes on
                    row.error = f"{type(exc).__name__}: {exc}"
                finally:
                    if prev is None:
                        os.environ.pop(ENV_QUANT_KERNEL, None)
                    else:
                        os.environ[ENV_QUANT_KERNEL] = prev
                progress(f"{m}x{k} {variant} {impl}: " + (row.error or f"eager {row.median_us:.1f} us, graph "
                                                           f"{row.graph_us:.1f} us, {row.gbps:.0f} GB/s"))
                rows.append(row)
        del xs
    return rows, copy_gbps


def format_rows(rows: list[QuantRow], copy_gbps: float) -> str:
    lines = [f"copy bandwidth {copy_gbps:.0f} GB/s" if copy_gbps else "CPU run (no copy baseline)",
             "eager = back-to-back calls (host bound when small); graph = CUDA-graph replay (GPU time); "
             "GB/s and copy % from the graph time where there is one",
             f"{'M':>6s} {'K':>6s}  {'variant':11s} {'impl':10s} {'eager us':>9s} {'graph us':>9s} {'GB/s':>8s} "
             f"{'copy %':>7s}"]
    for r in rows:
        if r.error:
            lines.append(f"{r.m:6d} {r.k:6d}  {r.variant:11s} {r.impl:10s} FAILED: {r.error}")
        else:
            graph = f"{r.graph_us:9.1f}" if r.graph_us else f"{'-':>9s}"
            lines.append(f"{r.m:6d} {r.k:6d}  {r.variant:11s} {r.impl:10s} {r.median_us:9.1f} {graph} "
                         f"{r.gbps:8.0f} {r.copy_pct:6.1f}%")
    return "\n".join(lines)


def sweep_configs(m: int = 8192, k: int = 8192, configs=None,
                  progress: Callable[[str], None] = print) -> dict[str, tuple[tuple[int, int, int], float]]:
    """Time the quantization kernel's tile configs on one large bf16 shape (GPU only); returns
    the best (config, GB/s) per format. Used to pick ``DEFAULT_CONFIG``."""
    from fp4core.formats.fp4 import Fp4Format
    from fp4core.formats.layouts import SfLayout
    from fp4core.formats.kernels import quantize_triton as qt
    # (rows, NVFP4 blocks, warps): 2 to 16 blocks per thread
    configs = configs or [(16, 16, 4), (16, 32, 4), (32, 32, 4), (16, 64, 4), (8, 32, 4), (32, 16, 4),
                          (32, 32, 8), (64, 32, 8), (32, 64, 8), (16, 32, 2), (64, 64, 8), (16, 16, 2)]
    xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    gs = torch.ones(1, device="cuda")
    best = {}
    for fmt in Fp4Format:
        nbytes = traffic_bytes(m, k, "nvfp4" if fmt is Fp4Format.NVFP4 else "mxfp4")
        for cfg in configs:
            bm, bc, w = cfg
            if fmt is Fp4Format.MXFP4:
                bc = max(1, bc // 2)  # same elements per program
            c = (bm, bc, w)
            run = lambda x: qt.quantize(x, fmt, SfLayout.layout_128x4, gs if fmt is Fp4Format.NVFP4 else None,
                                        False, c)
            us = graph_replay_us(lambda i: run(xs[i]), len(xs))  # GPU time: eager calls are host bound on slow hosts
            gbps = nbytes / us / 1e3
            progress(f"sweep {fmt.value} {m}x{k} config {c}: {us:.1f} us {gbps:.0f} GB/s")
            if gbps > best.get(fmt.value, (None, 0.0))[1]:
                best[fmt.value] = (c, gbps)
    return best


def tiles_env(best: dict) -> str:
    """``best`` from ``sweep_configs`` as a FP4CORE_QUANT_TILES value."""
    return ";".join(f"{fmt}={','.join(map(str, cfg))}" for fmt, (cfg, _) in best.items())
