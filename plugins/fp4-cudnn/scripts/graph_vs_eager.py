"""Eager (back-to-back Python calls) vs CUDA-graph replay time of the cudnn backend's best
plan and of bf16 cuBLAS on one shape: does the call cost more than its GPU work?

    python plugins/fp4-cudnn/scripts/graph_vs_eager.py [--shape 4096:8192:8192] [--engine eng0]

Each timing rotates over two input sets (fp4core.dispatch.timing); the graph replays one call per set.
"""

from __future__ import annotations

import argparse

import torch

from fp4core.dispatch.timing import CudaEventTimer, graph_replay_us, median
from plan_case import add_case_args, plan_case


def main() -> None:
    ap = argparse.ArgumentParser()
    add_case_args(ap)
    args = ap.parse_args()
    case = plan_case(args)
    be, p, sets, tac, out = case.backend, case.problem, case.sets, case.tactic, case.out
    m, n, k = p.m, p.n, p.k
    a = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    w = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    timer = CudaEventTimer()
    runs = {"cudnn " + args.engine: lambda i: be.run(p, sets[i], tac, out),
            "bf16 cuBLAS": lambda i: torch.mm(a[i], w[i].t(), out=out)}
    print(f"{m}x{n}x{k}, {torch.cuda.get_device_name()}")
    for name, run in runs.items():
        eager = median(timer.measure(run, 2))
        graph = graph_replay_us(run, 2)
        print(f"{name:14s} eager {eager:8.1f} us   graph {graph:8.1f} us")


if __name__ == "__main__":
    main()
