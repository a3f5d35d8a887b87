"""Time the cutlass backend (every tactic) beside bf16 cuBLAS, same process, CUDA-graph replays.

    python plugins/fp4-cutlass/bench_cutlass.py [--m 128,256,2048,4096] [--shapes 8192:8192,28672:8192] [--mx]

For each (N, K) and M: bf16 ``a @ w.T`` (cuBLAS) and each tactic are timed with CUDA events
(fp4core.timing.CudaEventTimer, medians) on rotating input sets, replaying a CUDA graph of 10
calls (GPU time per call); each tactic is checked against the exact reference first. Prints a
markdown table: best tactic, its time, TFLOP/s and the ratio to bf16 (bf16 time / ours).
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch

import fp4core
from fp4core import state
from fp4core.reference import TOLERANCE, reference_mm, relative_error
from fp4core.timing import CudaEventTimer, graph_replay_us, rotation_sets
from fp4core.tuner import make_sets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="128,256,2048,4096")
    ap.add_argument("--shapes", default="8192:8192,28672:8192", help="N:K,N:K")
    ap.add_argument("--mx", action="store_true", help="MXFP4 instead of NVFP4")
    ap.add_argument("--all-tactics", action="store_true", help="every compiled variant, not just tactics()")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    ms = [int(x) for x in args.m.split(",")]
    shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
    timer = CudaEventTimer(warmup_ms=10, sample_ms=2.0, samples=9)
    be = state.registry.get("cutlass")
    from fp4_cutlass import launcher
    lines = [f"device: {torch.cuda.get_device_name()}; date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
             f"torch {torch.__version__}; format: {'MXFP4' if args.mx else 'NVFP4'}; bf16 out",
             "", "| M | N | K | bf16 us | bf16 TFLOP/s | cutlass us | cutlass TFLOP/s | vs bf16 | best tactic | "
             "first tactic us | max rel err |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    for n, k in shapes:
        for m in ms:
            flop = 2.0 * m * n * k
            problem = fp4core.make_problem(m, n, k, use_nvfp4=not args.mx, device="cuda")
            sets = make_sets(problem)
            ref = reference_mm(problem, sets[0], torch.float32)
            nb = rotation_sets(2 * (m + n) * k, True)
            a16 = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(nb)]
            w16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(nb)]
            o16 = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
            base = graph_replay_us(lambda i: torch.matmul(a16[i], w16[i].t(), out=o16), nb, timer, reps=10)
            del a16, w16, o16
            out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
            tacs = be.tactics(problem)
            if args.all_tactics:
                tacs = tacs + [{"tm": tm, "bn": bn, "split_k": 1} for tm in launcher.TM_CHOICES[2:]
                               for bn in launcher.BN_CHOICES if {"tm": tm, "bn": bn, "split_k": 1} not in tacs]
            results, worst = [], 0.0
            for tac in tacs:
                out.fill_(float("nan"))
                be.run(problem, sets[0], tac, out)
                err = relative_error(out, ref)
                worst = max(worst, err)
                if not err <= TOLERANCE:
                    print(f"WRONG {m}x{n}x{k} {tac}: rel err {err}", flush=True)
                    continue
                us = graph_replay_us(lambda i: be.run(problem, sets[i], tac, out), len(sets), timer, reps=10)
                print(f"  {m}x{n}x{k} {tac}: {us:.1f} us ({flop / us / 1e6:.0f} TFLOP/s, {base / us:.2f}x bf16)", flush=True)
                results.append((us, tac))
            first_us = results[0][0] if results else float("nan")
            best_us, best = min(results, key=lambda r: r[0]) if results else (float("nan"), {})
            row = (f"| {m} | {n} | {k} | {base:.1f} | {flop / base / 1e6:.0f} | {best_us:.1f} | {flop / best_us / 1e6:.0f} | "
                   f"{base / best_us:.2f}x | tm={best.get('tm')},bn={best.get('bn')},s={best.get('split_k')} | "
                   f"{first_us:.1f} | {worst:.1e} |")
            print(row, flush=True)
            lines.append(row)
            del sets
            torch.cuda.empty_cache()
    print("\n".join(lines))
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
