"""The benchmark harness behind ``fp4core bench`` (and benchmarks/).

For each (M, N, K) it times every requested backend, ``auto`` and the bf16 baseline
(``torch.matmul`` of bf16 operands of the same shape) in the same run, on rotating input
sets, and checks every backend's result against the exact reference. Each backend is timed
interleaved with the baseline (batches alternate), and its ``speedup`` is the ratio of the
two medians of that paired measurement (``baseline_us``), so drift between the two cannot
pass for a speed difference.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from fp4core import api
from fp4core.dispatch.selector import selector
from fp4core.formats.reference import TOLERANCE, reference_mm, relative_error
from fp4core.dispatch.timing import default_timer, median, rotation_sets
from fp4core.dispatch.tuner import make_sets, prepared_sets
from fp4core.dispatch.synthetic import operand_bytes

#: (N, K) of real model layers.
PRESETS = {
    "llama3-8b": [(4096, 4096), (14336, 4096), (4096, 14336)],
    "llama3-70b": [(8192, 8192), (28672, 8192), (8192, 28672)],
    "deepseek-v3": [(7168, 2048), (3072, 1536)],
    "gpt-oss-120b": [(1280, 2880), (2880, 1024)],
}


@dataclasses.dataclass
class BenchRow:
    m: int
    n: int
    k: int
    backend: str
    median_us: float = 0.0
    spread_us: float = 0.0
    tflops: float = 0.0
    gbps: float = 0.0
    speedup: float = 0.0
    baseline_us: float = 0.0  # bf16 median measured interleaved with this row
    rel_err: float = 0.0
    correct: bool = True
    error: str = ""
    skipped: str = ""  # why the backend does not take this shape (not a failure)


def _ints(text: str | None, default: list[int]) -> list[int]:
    return [int(x) for x in text.split(",")] if text else default


def shapes_from_args(args) -> list[tuple[int, int, int]]:
    """(M, N, K) triples from --m/--n/--k, --preset or --shapes-file."""
    path = getattr(args, "shapes_file", None)
    if path:
        try:
            with open(path) as f:
                lines = f.readlines()
        except OSError as exc:
            raise ValueError(f"--shapes-file: cannot read {path!r}: {exc.strerror or exc}") from None
        shapes = []
        for no, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                m, n, k = (int(v) for v in line.split()[:3])
            except ValueError:
                raise ValueError(f"--shapes-file: {path}:{no}: expected 'M N K' (three integers), got "
                                 f"{line.strip()!r}") from None
            shapes.append((m, n, k))
        if not shapes:
            raise ValueError(f"--shapes-file: {path!r} holds no 'M N K' line")
        return shapes
    cuda = torch.cuda.is_available()
    ms = _ints(args.m, [1, 16, 128, 2048] if cuda else [1, 16, 64])
    if args.preset:
        nks = PRESETS[args.preset]
    else:
        nks = [(n, k) for n in _ints(args.n, [8192] if cuda else [512]) for k in _ints(args.k, [8192] if cuda else [512])]
    return [(m, n, k) for n, k in nks for m in ms]


def _summary(samples: list[float]) -> tuple[float, float]:
    """Median and the 20-80 percentile spread."""
    s = sorted(samples)
    return median(samples), s[int(0.8 * (len(s) - 1))] - s[int(0.2 * (len(s) - 1))]


def run_bench(shapes, backends: list[str] | None = None, use_nvfp4: bool = True,
              out_dtype: torch.dtype = torch.bfloat16, autotune: bool = False,
              progress: Callable[[str], None] = lambda s: None, prepared: bool = False,
              act_dtype: torch.dtype | None = None) -> list[BenchRow]:
    """Benchmark ``shapes``; see the module docstring. Returns one row per (shape, backend).

    ``act_dtype``: None times ``mm_fp4`` problems (FP4 activations); torch.bfloat16 times
    weight-only ``mm_bf16_fp4`` problems, where backends that do not take bf16 activations are
    listed as skipped, and on CUDA a ``tinygemm`` row adds torch's int4 weight-only kernel
    (group 128; its ``rel err`` is against the bf16 product, the error of its own int4
    quantization, not an exactness check).

    ``prepared``: describe the calls as on a weight from ``fp4core.prepare`` (what ``auto`` then
    chooses among includes backends that need their own layout, and each backend gets its
    prepared weight); otherwise plain calls, where such a backend still runs when named, on a
    weight prepared for it."""
    rows: list[BenchRow] = []
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    names = backends or [b.name for b in selector.registry.backends()]
    timer = default_timer(cuda)
    for m, n, k in shapes:
        problem = api.make_problem(m, n, k, use_nvfp4=use_nvfp4, out_dtype=out_dtype, device=device,
                                   prepared=prepared, act_dtype=act_dtype)
        sets = make_sets(problem)
        ref = reference_mm(problem, sets[0], torch.float32 if cuda else torch.float64)
        flops = 2.0 * m * n * k
        fp4_bytes = operand_bytes(problem)
        # bf16 baseline on the same shape, rotating as many sets as fit the same budget
        nb = rotation_sets(2 * (m + n) * k, cuda)
        a16 = [torch.randn(m, k, device=device, dtype=torch.bfloat16) for _ in range(nb)]
        w16 = [torch.randn(n, k, device=device, dtype=torch.bfloat16) for _ in range(nb)]
        out16 = torch.empty(m, n, device=device, dtype=torch.bfloat16)
        baseline = (lambda i: torch.matmul(a16[i], w16[i].t(), out=out16), nb)
        base_us, base_spread = _summary(timer.measure(*baseline))
        rows.append(BenchRow(m, n, k, "bf16", base_us, base_spread, flops / base_us / 1e6,
                             (2 * (m + n) * k + 2 * m * n) / base_us / 1e3, 1.0, base_us, 0.0))
        progress(f"{m}x{n}x{k}: bf16 torch.matmul {base_us:.1f} us")
        if act_dtype is not None and cuda:
            rows.append(_tinygemm_row(m, n, k, a16, w16, baseline, timer, flops, progress))
        if autotune:
            # Tune first so every named backend is timed with its own tuned tactic too.
            api.tune([problem], verbose=False)
        for name in names + ["auto"]:
            row = BenchRow(m, n, k, name)
            backend = selector.registry.get(name) if name != "auto" else None
            answer = backend.supports(problem) if backend is not None else None
            if answer is not None and not answer:
                row.skipped = answer.reason
                progress(f"{m}x{n}x{k}: {name} does not take this shape: {answer.reason}")
                rows.append(row)
                continue
            try:
                be_name = name
                if name == "auto":
                    be_name = api.explain(problem).choice.backend.name
                    row.backend = f"auto:{be_name}"
                choice = api.selector.choose(problem, name)
                be = choice.backend
                rp = problem.as_prepared if be.info.needs_prepare else problem
                bsets = prepared_sets(be, rp, sets)
                out = torch.full((m, n), float("nan"), dtype=out_dtype, device=device)
                be.run(rp, bsets[0], choice.tactic, out)
                row.rel_err = relative_error(out, ref)
                row.correct = row.rel_err <= TOLERANCE
                base_s, cand_s = timer.measure_interleaved(
                    [baseline, (lambda i: be.run(rp, bsets[i], choice.tactic, out), len(bsets))])
                row.median_us, row.spread_us = _summary(cand_s)
                row.baseline_us = median(base_s)
                row.tflops = flops / row.median_us / 1e6
                row.gbps = fp4_bytes / row.median_us / 1e3
                row.speedup = row.baseline_us / row.median_us
            except Exception as exc:  # a failing backend is reported, the sweep goes on
                row.error, row.correct = f"{type(exc).__name__}: {exc}", False
            progress(f"{m}x{n}x{k}: {row.backend} " + (row.error or f"{row.median_us:.1f} us, err {row.rel_err:.1e}"))
            rows.append(row)
        del a16, w16, out16
    return rows


def _tinygemm_row(m: int, n: int, k: int, a16: list[torch.Tensor], w16: list[torch.Tensor], baseline,
                  timer, flops: float, progress: Callable[[str], None]) -> BenchRow:
    """torch's int4 weight-only GEMM (tinygemm, group 128) on the baseline's first weight, timed
    interleaved with the baseline: the W4A16 reference point of ``run_bench(act_dtype=...)``."""
    from fp4core.tools.tinygemm import TinyGemmLinear
    row = BenchRow(m, n, k, "tinygemm")
    try:
        lin = torch.nn.Linear(k, n, bias=False, device=a16[0].device, dtype=torch.bfloat16)
        lin.weight.data.copy_(w16[0])
        layer = TinyGemmLinear(lin)
        y = layer(a16[0])
        row.rel_err = relative_error(y.float(), (a16[0].float() @ w16[0].float().t()))
        base_s, cand_s = timer.measure_interleaved([baseline, (lambda i: layer(a16[i]), len(a16))])
        row.median_us, row.spread_us = _summary(cand_s)
        row.baseline_us = median(base_s)
        row.tflops = flops / row.median_us / 1e6
        row.gbps = (2 * m * k + n * k // 2 + n * k // 128 * 4 + 2 * m * n) / row.median_us / 1e3
        row.speedup = row.baseline_us / row.median_us
    except Exception as exc:  # e.g. K not a multiple of 1024: a missing row, not a failed sweep
        row.skipped = f"{type(exc).__name__}: {exc}"
    progress(f"{m}x{n}x{k}: tinygemm " + (row.skipped or f"{row.median_us:.1f} us"))
    return row
