"""Every fp4-trtllm weight-only (W4A16) tactic, timed by CUDA-graph replay, one line per shape.

For M = 1 and 16 on two Llama-3-70B layers: the first (untuned default) tactic's time, the best
tactic's time and label, the worst relative error of all tactics against the float64-checked
reference, and every tactic's time in the order ``tactics()`` lists them. No tuning cache is
read or written, so two plugin versions compare tactic for tactic: put the other version's
``fp4_trtllm`` package first on ``PYTHONPATH`` and run it again with another label.

    python benchmarks/trtllm_w16_tactics.py LABEL [NxK ...]   (default 8192x8192 8192x28672)
"""

from __future__ import annotations

import sys

import torch
import triton.testing

import fp4core
import fp4_trtllm
from fp4core.dispatch.synthetic import random_operands
from fp4core.formats.reference import reference_mm, relative_error
from fp4_trtllm.plugin import TrtllmBackend


def main(label: str, shapes: list[tuple[int, int]]) -> None:
    be = TrtllmBackend()
    for n, k in shapes:
        for m in (1, 16):
            p = fp4core.make_problem(m, n, k, prepared=True, device="cuda", act_dtype=torch.bfloat16)
            ops = random_operands(p, device="cuda")
            w = be.prepare(p.with_m(None), fp4core.Operands(None, None, ops.b, ops.b_scale))
            run_ops = fp4core.Operands(ops.a, None, w.b, w.b_scale, ops.alpha, w.extra)
            ref = reference_mm(p, ops, torch.float32)
            out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
            res = []
            for tac in be.tactics(p):
                out.fill_(float("nan"))
                be.run(p, run_ops, tac, out)
                torch.cuda.synchronize()
                err = relative_error(out, ref)
                us = triton.testing.do_bench_cudagraph(lambda: be.run(p, run_ops, tac, out), rep=20) * 1e3
                res.append((us, tac.label(), err))
            best = min(res)
            print(f"{label} fp4-trtllm {fp4_trtllm.__version__} m={m} n={n} k={k} first={res[0][0]:.1f}us "
                  f"best={best[0]:.1f}us [{best[1]}] maxerr={max(r[2] for r in res):.2e} all="
                  + " ".join(f"{r[0]:.1f}" for r in res), flush=True)


if __name__ == "__main__":
    given = [tuple(int(x) for x in s.split("x")) for s in sys.argv[2:]]
    main(sys.argv[1] if len(sys.argv) > 1 else "run", given or [(8192, 8192), (8192, 28672)])
