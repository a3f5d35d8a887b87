"""Does bf16 cuBLAS run slower when its timed batches alternate with the cudnn backend's?

The interleaved `fp4core bench` pairs a backend's batches with bf16's; at M = 4096 on 8192²
their bf16 halves came out 5-14 % slower than bf16 timed alone. This times, on one shape and
in this order: bf16 alone; bf16 interleaved with a second bf16 run (the pairing itself);
bf16 interleaved with cudnn's plan; cudnn alone; bf16 alone again (the device later, warmer).

    python plugins/fp4-cudnn/scripts/interleave_probe.py [--shape 4096:8192:8192] [--engine eng0] [--rounds 2]
"""

from __future__ import annotations

import argparse

import torch

from fp4core.dispatch.timing import CudaEventTimer, median
from plan_case import add_case_args, plan_case


def main() -> None:
    ap = argparse.ArgumentParser()
    add_case_args(ap)
    ap.add_argument("--rounds", type=int, default=2, help="repeat the whole sequence")
    args = ap.parse_args()
    case = plan_case(args)
    be, p, sets, tac, out = case.backend, case.problem, case.sets, case.tactic, case.out
    m, n, k = p.m, p.n, p.k
    out2 = torch.empty_like(out)
    a = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    w = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    bf16 = (lambda i: torch.mm(a[i], w[i].t(), out=out), 2)
    bf16b = (lambda i: torch.mm(a[2 + i], w[2 + i].t(), out=out2), 2)
    cudnn = (lambda i: be.run(p, sets[i], tac, out2), 2)
    timer = CudaEventTimer(samples=21)
    print(f"{m}x{n}x{k}, {torch.cuda.get_device_name()}, cudnn plain:{args.engine}")
    for r in range(args.rounds):
        alone = median(timer.measure(*bf16))
        x, y = timer.measure_interleaved([bf16, bf16b])
        b, c = timer.measure_interleaved([bf16, cudnn])
        c_alone = median(timer.measure(*cudnn))
        again = median(timer.measure(*bf16))
        print(f"round {r}: bf16 alone {alone:.1f} | bf16 with bf16 {median(x):.1f} / {median(y):.1f} | "
              f"bf16 with cudnn {median(b):.1f} / cudnn {median(c):.1f} (ratio {median(b) / median(c):.3f}) | "
              f"cudnn alone {c_alone:.1f} (vs first bf16 alone {alone / c_alone:.3f}) | bf16 alone again {again:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
