"""Time the trtllm backend (every tactic) beside bf16 cuBLAS and the device copy bandwidth.

    python plugins/fp4-trtllm/bench_trtllm.py [--m 1,8,16,32,64] [--mx] [--out table.md] [--verbose]

A markdown front end to ``fp4core.tools.tactic_sweep.sweep_tactics`` (also ``fp4core bench
--tactics --backends trtllm``): every tactic is checked against the exact reference, then it
and bf16 ``a @ w.T`` (cuBLAS) are timed in the same process. Two timings: "graph" replays a
CUDA graph of 20 calls (GPU time per call) for every tactic, and "eager" calls from Python
one by one for bf16 and the best tactic (adds the host path; small shapes are host-bound).
The weight rate is the FP4 weight + scale bytes over the best graph time, against the
device-to-device copy rate measured in the same run.
"""

from __future__ import annotations

import argparse
import sys

from fp4core.dispatch.timing import CudaEventTimer, copy_bandwidth_gbps
from fp4core.tools.bench_table import MarkdownTable, parse_ms, parse_shapes, run_header, sweep_table
from fp4core.tools.tactic_sweep import ShapeSweep, sweep_tactics

SHAPES = [(8192, 8192), (28672, 8192), (8192, 28672), (1280, 2880), (2880, 1024), (7168, 2048)]
COLUMNS = ["M", "N", "K", "bf16 graph us", "trtllm graph us", "speedup graph", "bf16 eager us", "trtllm eager us",
           "speedup eager", "best tactic (graph)", "first tactic graph us", "weight TB/s (graph)", "% of copy bw",
           "max rel err"]


def _label(tac) -> str:
    """Short name of a TrtllmTactic: kernel, tiles per warp, warps, then splits or CTAs per SM."""
    if tac.kernel == "splitk":
        return f"splitk t={tac.t},w={tac.warps},s={tac.split_k},ring={tac.ring}"
    return f"streamk t={tac.t},w={tac.warps},c={tac.ctas}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,8,16,32,64")
    ap.add_argument("--mx", action="store_true", help="MXFP4 instead of NVFP4")
    ap.add_argument("--shapes", default="", help="N:K,N:K (default: llama-70b, gpt-oss, deepseek)")
    ap.add_argument("--out", default="")
    ap.add_argument("--verbose", action="store_true", help="print every tactic's graph time")
    args = ap.parse_args(argv)
    shapes = parse_shapes(args.shapes) if args.shapes else SHAPES
    timer = CudaEventTimer(warmup_ms=10, sample_ms=1.0, samples=11)
    bw = copy_bandwidth_gbps(timer=timer) / 1e3
    say = (lambda s: print("  " + s, flush=True)) if args.verbose else (lambda s: None)

    def row(sw: ShapeSweep) -> str:
        # the best graph tactic again as eager Python calls: the host path small shapes pay
        m, n, k, best = sw.m, sw.n, sw.k, sw.best
        if best is None:
            return f"| {m} | {n} | {k} | {sw.baseline_us:.1f} | no correct tactic |" + " - |" * 9
        eager = sweep_tactics("trtllm", m, n, k, use_nvfp4=not args.mx, tactics=[best.tactic], graph=False, timer=timer)
        e_us = eager.timings[0].us
        block = 32 if args.mx else 16
        tbs = n * k * (0.5 + 1.0 / block) / best.us / 1e6  # FP4 codes + one scale byte per block
        return (f"| {m} | {n} | {k} | {sw.baseline_us:.1f} | {best.us:.1f} | {sw.speedup(best):.2f}x | "
                f"{eager.baseline_us:.1f} | {e_us:.1f} | {eager.baseline_us / e_us:.2f}x | {_label(best.tactic)} | "
                f"{sw.first.us:.1f} | {tbs:.2f} | {100 * tbs / bw:.0f}% | {sw.max_rel_err:.1e} |")

    table = MarkdownTable(COLUMNS, title=run_header(not args.mx, f"copy bandwidth {bw:.2f} TB/s (read+write)"))
    print(table.lines[0], flush=True)
    sweep_table("trtllm", parse_ms(args.m), shapes, table, row, use_nvfp4=not args.mx, reps=20, timer=timer,
                progress=say)
    if args.out:
        table.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
