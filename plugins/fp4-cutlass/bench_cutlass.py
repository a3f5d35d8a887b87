"""Time the cutlass backend (every tactic) beside bf16 cuBLAS, same process, CUDA-graph replays.

    python plugins/fp4-cutlass/bench_cutlass.py [--m 128,256,2048,4096] [--shapes 8192:8192,28672:8192] [--mx]

A markdown front end to ``fp4core.tools.tactic_sweep.sweep_tactics`` (also ``fp4core bench
--tactics --backends cutlass``): every tactic is checked against the exact reference, then it
and bf16 ``a @ w.T`` (cuBLAS) are timed as CUDA-graph replays of 10 calls (GPU time per call).
One row per shape: the best tactic, its time, TFLOP/s, the ratio to bf16 (bf16 time / ours),
the default tactic's time and the largest error of any tactic.
"""

from __future__ import annotations

import argparse
import sys

from fp4core.dispatch.timing import CudaEventTimer
from fp4core.tools.bench_table import MarkdownTable, parse_ms, parse_shapes, run_header, sweep_table
from fp4core.tools.tactic_sweep import ShapeSweep

COLUMNS = ["M", "N", "K", "bf16 us", "bf16 TFLOP/s", "cutlass us", "cutlass TFLOP/s", "vs bf16", "best tactic",
           "first tactic us", "max rel err"]


def _row(sw: ShapeSweep) -> str:
    """One table row: the best tactic against bf16, TFLOP/s from 2*M*N*K."""
    m, n, k, best = sw.m, sw.n, sw.k, sw.best
    if best is None:
        return f"| {m} | {n} | {k} | {sw.baseline_us:.1f} | - | - | - | - | no correct tactic | - | - |"
    flop, t = 2.0 * m * n * k, best.tactic
    return (f"| {m} | {n} | {k} | {sw.baseline_us:.1f} | {flop / sw.baseline_us / 1e6:.0f} | {best.us:.1f} | "
            f"{flop / best.us / 1e6:.0f} | {sw.speedup(best):.2f}x | tm={t.tm},bn={t.bn},"
            f"s={t.split_k} | {sw.first.us:.1f} | {sw.max_rel_err:.1e} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="128,256,2048,4096")
    ap.add_argument("--shapes", default="8192:8192,28672:8192", help="N:K,N:K")
    ap.add_argument("--mx", action="store_true", help="MXFP4 instead of NVFP4")
    ap.add_argument("--all-tactics", action="store_true", help="every compiled variant, not just tactics()")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    timer = CudaEventTimer(warmup_ms=10, sample_ms=2.0, samples=9)
    from fp4_cutlass import launcher
    from fp4_cutlass.plugin import CutlassTactic
    extra = ([CutlassTactic(tm=tm, bn=bn, split_k=1) for tm in launcher.TM_CHOICES[2:] for bn in launcher.BN_CHOICES]
             if args.all_tactics else [])
    table = MarkdownTable(COLUMNS, title=run_header(not args.mx, "bf16 out"))
    print(table.lines[0], flush=True)
    sweep_table("cutlass", parse_ms(args.m), parse_shapes(args.shapes), table, _row, use_nvfp4=not args.mx,
                extra_tactics=extra, timer=timer, progress=lambda s: print("  " + s, flush=True))
    print(table.text())
    if args.out:
        table.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
