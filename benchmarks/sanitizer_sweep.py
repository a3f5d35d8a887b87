"""Run every tactic of every loaded GPU backend once per shape, for compute-sanitizer.

    compute-sanitizer --tool memcheck python benchmarks/sanitizer_sweep.py --budget-s 200

This script is the target process: it prints one ``CASE`` line before each (backend, format,
shape, plain/prepared weight, tactic), runs it once into a NaN-poisoned output, synchronizes
(so a sanitizer report lands right after the case that caused it) and prints ``OK`` or why
not. Operands and the reference are made once per (format, shape). Without the sanitizer it
is a quick correctness sweep of every tactic. The ``sanitizer`` step of ``benchmarks/suite.sh``
runs it under memcheck, racecheck and initcheck and summarizes the reports.

Run it with ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` under memcheck: with torch's caching allocator
an out-of-bounds access that stays inside a pooled segment is invisible to the sanitizer.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from fp4core import api
from fp4core.dispatch.selector import selector
from fp4core.formats.reference import reference_mm
from fp4core.dispatch.tuner import make_sets, prepared_sets, run_checked, tactic_label

# odd M and N, K = 28672 (the shape of the issue-16 fault), a split-K-sized K, a prefill M
DEFAULT_SHAPES = "1x136x28672,7x1000x28672,33x2880x512,130x1000x4096,1000x1280x2880,2048x1024x28672"


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """'MxNxK,MxNxK' -> [(m, n, k), ...]."""
    shapes = []
    for item in text.split(","):
        try:
            m, n, k = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--shapes: expected MxNxK items, got {item!r}") from None
        shapes.append((m, n, k))
    return shapes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma list of MxNxK")
    ap.add_argument("--formats", default="nvfp4,mxfp4")
    ap.add_argument("--backends", default="", help="comma list (default: every loaded backend but torch)")
    ap.add_argument("--budget-s", type=float, default=0, help="start no case after this many seconds (0: no limit)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to sweep", file=sys.stderr)
        return 2
    names = [b for b in args.backends.split(",") if b]
    backends = [b for b in selector.registry.backends() if b.name != "torch" and (not names or b.name in names)]
    t0 = time.perf_counter()
    counts = {"cases": 0, "ok": 0, "failed": 0, "skipped_budget": 0}
    for fmt in args.formats.split(","):
        for m, n, k in parse_shapes(args.shapes):
            base = api.make_problem(m, n, k, use_nvfp4=(fmt == "nvfp4"), device="cuda")
            sets = make_sets(base, n_sets=1)
            ref = reference_mm(base, sets[0], torch.float32)
            for be in backends:
                # the prepared weight only where the backend has its own layout for it
                variants = [True] if be.info.needs_prepare else ([False, True] if be.has_hook("prepare") else [False])
                for prepared in variants:
                    problem = api.make_problem(m, n, k, use_nvfp4=(fmt == "nvfp4"), device="cuda",
                                               prepared=prepared)
                    if not be.supports(problem):
                        continue
                    try:
                        tactics = be.tactics(problem)
                        bsets = prepared_sets(be, problem, sets)
                    except Exception as exc:
                        print(f"CASE {be.name} {fmt} {m}x{n}x{k} prepared={int(prepared)}: tactics/prepare "
                              f"raised {type(exc).__name__}: {exc}", flush=True)
                        counts["failed"] += 1
                        continue
                    for tactic in tactics:
                        if args.budget_s and time.perf_counter() - t0 > args.budget_s:
                            counts["skipped_budget"] += 1
                            continue
                        label = f"{be.name} {fmt} {m}x{n}x{k} prepared={int(prepared)} [{tactic_label(tactic)}]"
                        print(f"CASE {label}", flush=True)
                        counts["cases"] += 1
                        err, why = run_checked(be, problem, bsets[0], tactic, ref)
                        try:
                            torch.cuda.synchronize()
                        except Exception as exc:  # a sticky error: nothing more can run here
                            print(f"  CONTEXT LOST ({why or exc}); stopping the sweep", flush=True)
                            print(f"SWEEP {counts} in {time.perf_counter() - t0:.0f} s, stopped", flush=True)
                            return 3
                        if why is None:
                            counts["ok"] += 1
                            print(f"  OK rel_err={err:.2e}", flush=True)
                        else:
                            counts["failed"] += 1
                            print(f"  FAILED {why}", flush=True)
    print(f"SWEEP {counts} in {time.perf_counter() - t0:.0f} s", flush=True)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
