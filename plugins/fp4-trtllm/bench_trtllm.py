"""Time the trtllm backend (every tactic) beside bf16 cuBLAS and the device copy bandwidth.

    python plugins/fp4-trtllm/bench_trtllm.py [--m 1,8,16,32,64] [--mx] [--out table.md]

For each (N, K) and M: bf16 ``a @ w.T`` (cuBLAS) and each trtllm tactic are timed with CUDA
events (fp4core.timing.CudaEventTimer, medians) on rotating input sets, in the same process;
each tactic is checked against the exact reference first. Two timings each: "graph" replays a
CUDA graph of 20 calls (the GPU time per call; launch gaps shrink) and "eager" calls from
Python one by one (adds the host path; small shapes are host-bound there). Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch

import fp4core
from fp4core.reference import TOLERANCE, reference_mm, relative_error
from fp4core.timing import CudaEventTimer, copy_bandwidth_gbps, graph_replay_us, median, rotation_sets
from fp4core.tuner import make_sets, prepared_sets
from fp4core import state

SHAPES = [(8192, 8192), (28672, 8192), (8192, 28672), (1280, 2880), (2880, 1024), (7168, 2048)]


def _label(tac: dict) -> str:
    """Short name of a tactic: kernel, tiles per warp, warps, then splits or CTAs per SM."""
    if tac.get("kernel") == "splitk":
        return f"splitk t={tac['t']},w={tac['warps']},s={tac['split_k']}"
    return f"streamk t={tac.get('t')},w={tac.get('warps')},c={tac.get('ctas')}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,8,16,32,64")
    ap.add_argument("--mx", action="store_true", help="MXFP4 instead of NVFP4")
    ap.add_argument("--shapes", default="", help="N:K,N:K (default: llama-70b, gpt-oss, deepseek)")
    ap.add_argument("--out", default="")
    ap.add_argument("--verbose", action="store_true", help="print every tactic's graph time")
    args = ap.parse_args(argv)
    ms = [int(x) for x in args.m.split(",")]
    shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    timer = CudaEventTimer(warmup_ms=10, sample_ms=1.0, samples=11)
    be = state.registry.get("trtllm")
    name = torch.cuda.get_device_name()
    bw = copy_bandwidth_gbps(timer=timer) / 1e3
    lines = [f"device: {name}; date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
             f"format: {'MXFP4' if args.mx else 'NVFP4'}; copy bandwidth {bw:.2f} TB/s (read+write)",
             "", "| M | N | K | bf16 graph us | trtllm graph us | speedup graph | bf16 eager us | trtllm eager us "
             "| speedup eager | best tactic (graph) | first tactic graph us | weight TB/s (graph) | % of copy bw "
             "| max rel err |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    for n, k in shapes:
        for m in ms:
            problem = fp4core.make_problem(m, n, k, use_nvfp4=not args.mx, prepared=True, device="cuda")
            sets = make_sets(problem)
            ref = reference_mm(problem, sets[0], torch.float32)
            bsets = prepared_sets(be, problem, sets)
            nb = rotation_sets(2 * (m + n) * k, True)
            a16 = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(nb)]
            w16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(nb)]
            o16 = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
            bf16_fn = lambda i: torch.matmul(a16[i], w16[i].t(), out=o16)  # noqa: E731
            base_eager = median(timer.measure(bf16_fn, nb))
            base = graph_replay_us(bf16_fn, nb, timer, reps=20)
            del a16, w16, o16
            out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
            results = []
            worst_err = 0.0
            for tac in be.tactics(problem):
                out.fill_(float("nan"))
                be.run(problem, bsets[0], tac, out)
                err = relative_error(out, ref)
                worst_err = max(worst_err, err)
                if not err <= TOLERANCE:
                    print(f"WRONG {m}x{n}x{k} {tac}: rel err {err}", flush=True)
                    continue
                us = graph_replay_us(lambda i: be.run(problem, bsets[i], tac, out), len(bsets), timer, reps=20)
                results.append((us, tac))
                if args.verbose:
                    print(f"  {m}x{n}x{k} {tac}: {us:.1f} us", flush=True)
            first_us = results[0][0] if results else float("nan")
            best_us, best = min(results, key=lambda r: r[0]) if results else (float("nan"), {})
            eager = median(timer.measure(lambda i: be.run(problem, bsets[i], best, out), len(bsets))) if results else float("nan")
            wbytes = n * k * (0.5 + 1.0 / problem.block_size)
            tbs = wbytes / best_us / 1e6
            row = (f"| {m} | {n} | {k} | {base:.1f} | {best_us:.1f} | {base / best_us:.2f}x | {base_eager:.1f} | "
                   f"{eager:.1f} | {base_eager / eager:.2f}x | {_label(best)} | {first_us:.1f} | {tbs:.2f} | {100 * tbs / bw:.0f}% | {worst_err:.1e} |")
            print(row, flush=True)
            lines.append(row)
            del sets, bsets
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
