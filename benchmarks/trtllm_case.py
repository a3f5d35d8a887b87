"""Run one fp4-trtllm tactic three times on random operands (for Nsight Compute to profile
the third launch): python benchmarks/trtllm_case.py M N K [TACTIC_JSON]

The weight is prepared once; without TACTIC_JSON the backend's first tactic runs. NVFP4, bf16
out, 128x4 activation scales. Run by the ``ncu`` step of benchmarks/suite.sh."""

import json
import sys

import torch

import fp4core
from fp4core.dispatch.synthetic import random_operands
from fp4_trtllm.plugin import TrtllmBackend


def main(argv: list[str]) -> None:
    m, n, k = (int(x) for x in argv[:3])
    be = TrtllmBackend()
    p = fp4core.make_problem(m, n, k, prepared=True, device="cuda")
    ops = random_operands(p, device="cuda")
    w = be.prepare(p.with_m(None), fp4core.Operands(None, None, ops.b, ops.b_scale))
    w = w.with_activation(ops.a, ops.a_scale, ops.alpha)
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    tactic = be.tactic_from_json(json.loads(argv[3])) if len(argv) > 3 else be.tactics(p)[0]
    print("tactic", tactic)
    for _ in range(3):
        be.run(p, w, tactic, out)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1:])
