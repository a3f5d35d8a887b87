"""Host time per call of a backend's ``run`` hook against its bound launcher (``bind``).

``bind`` is what ``Fp4Linear``'s per-M plans call: the weight checks, the workspace and the
parameter block are made once, a call passes four pointers. For one small problem per
(activation kind, M) it prints the host microseconds per call of both, measured as in
``host_overhead.py``: the submit loop's wall time while a device-side spin keeps the GPU busy,
so no waiting for the GPU is counted.

    python benchmarks/bind_host.py [--backend cutlass] [--n 256] [--k 1024]
"""

from __future__ import annotations

import argparse

import torch

import fp4core
from fp4core.dispatch.selector import selector
from fp4core.dispatch.synthetic import random_operands
from fp4core.dispatch.tuner import prepared_sets

from host_overhead import host_us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cutlass")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--k", type=int, default=1024)
    args = ap.parse_args()
    be = selector.registry.get(args.backend)
    if be is None or not be.has_hook("bind"):
        raise SystemExit(f"--backend: {args.backend!r} is not installed or has no bind hook")
    print(f"{'activations':>11s} {'M':>4s}  {'run us':>7s} {'bind us':>7s}  tactic ({torch.cuda.get_device_name()})")
    for act in (torch.bfloat16, None):
        for m in (1, 16, 128):
            p = fp4core.make_problem(m, args.n, args.k, device="cuda", act_dtype=act,
                                     prepared=be.info.needs_prepare)
            [ops] = prepared_sets(be, p, [random_operands(p, device="cuda")])
            tac = be.tactics(p)[0]
            out = torch.empty(m, args.n, dtype=torch.bfloat16, device="cuda")
            bound = be.bind(p, ops, tac)
            run_us = host_us(lambda: be.run(p, ops, tac, out))
            bind_us = host_us(lambda: bound(ops.a, ops.a_scale, ops.alpha, out))
            print(f"{'bf16' if act else 'fp4':>11s} {m:4d}  {run_us:7.1f} {bind_us:7.1f}  {tac.label()}", flush=True)


if __name__ == "__main__":
    main()
