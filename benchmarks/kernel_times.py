"""GPU time of each kernel one GEMM call launches (torch.profiler), beside bf16 cuBLAS.

Where a backend's time goes: e.g. fp4-cutlass's activation pre-pass, GEMM and split-K reduce,
or fp4-trtllm's one kernel. Weight-only calls (``mm_bf16_fp4`` on a prepared weight) by
default, W4A4 (``mm_fp4``) with ``--w4a4``; the backend's first tactic (untuned).

    python benchmarks/kernel_times.py --backend cutlass --m 64,128,2048 [--shapes 8192x8192,28672x8192] [--w4a4]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import fp4core
from fp4core.dispatch.synthetic import random_operands


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", required=True)
    ap.add_argument("--m", default="1,16,64,128,2048")
    ap.add_argument("--shapes", default="8192x8192,28672x8192")
    ap.add_argument("--w4a4", action="store_true", help="mm_fp4 (FP4 activations) instead of weight-only")
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    act = None if args.w4a4 else torch.bfloat16
    for shape in args.shapes.split(","):
        n, k = (int(x) for x in shape.split("x"))
        wbf = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        for m in (int(x) for x in args.m.split(",")):
            p = fp4core.make_problem(m, n, k, device="cuda", prepared=True, act_dtype=act)
            ops = random_operands(p, device="cuda")
            if act is None:
                w = fp4core.prepare(ops.b.t(), ops.b_scale, backends=[args.backend])
                call = lambda: fp4core.mm_fp4(ops.a, w, ops.a_scale, None, ops.alpha, backend=args.backend)
            else:
                w, _, alpha = fp4core.prepare_bf16_fp4_weights(ops.b, ops.b_scale, ops.alpha, backend=args.backend)
                call = lambda: fp4core.mm_bf16_fp4(ops.a, w, None, alpha, backend=args.backend)
            x16 = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            for _ in range(3):
                call()
                x16 @ wbf.t()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(args.calls):
                    call()
                    x16 @ wbf.t()
                torch.cuda.synchronize()
            rows = [(e.key, e.device_time_total / args.calls) for e in prof.key_averages() if e.device_time_total > 0]
            print(f"{args.backend} {'w4a4' if act is None else 'w4a16'} M={m} N={n} K={k}: "
                  + "; ".join(f"{name[:70]} {us:.1f} us" for name, us in rows), flush=True)


if __name__ == "__main__":
    main()
