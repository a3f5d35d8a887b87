"""Time every tactic of the ``triton`` backend beside bf16 cuBLAS, on one device, one run.

    python bench_triton.py --m 1,16,128,2048,8192 --n 8192 --k 8192 [--format mxfp4]
        [--explore] [--json out.json] [--md out.md]

For each shape: bf16 ``torch.matmul(a, w.T)`` on rotating inputs, then each tactic (the
backend's own list, or with --explore a wider one) checked once against the exact
reference and timed with fp4core's CUDA-event timer on fp4core's rotating input sets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import fp4core
from fp4core.formats.reference import reference_mm, relative_error
from fp4core.dispatch.timing import CudaEventTimer, median, rotation_sets
from fp4core.dispatch.tuner import make_sets, tactic_label
from fp4core.tools.bench_table import MarkdownTable, parse_ms
from fp4_triton.plugin import TritonBackend
from fp4_triton.tactics import TritonTactic, _t, tactics_for


def explore(p) -> list[TritonTactic]:
    """The backend's tactics plus neighbours worth a look (used to choose the defaults)."""
    m = p.m
    extra = []
    if m <= 16:
        extra = [_t(p, 16, 32, 256, 4, 4, swap=1), _t(p, 16, 64, 512, 4, 3, swap=1),
                 _t(p, 16, 64, 256, 4, 3, swap=1), _t(p, 16, 128, 256, 8, 3, swap=1),
                 _t(p, 16, 64, 256, 4, 4, swap=1, split=4)]
    elif m <= 64:
        bm = 32 if m <= 32 else 64
        extra = [_t(p, bm, 64, 128, 4, 4, swap=1), _t(p, bm, 128, 128, 8, 4, swap=1),
                 _t(p, bm, 256, 128, 8, 3, swap=1), _t(p, 64, 64, 128, 4, 4)]
    elif m <= 256:
        extra = [_t(p, 128, 256, 64, 8, 3), _t(p, 64, 128, 256, 4, 3), _t(p, 128, 128, 64, 4, 4),
                 _t(p, 64, 64, 128, 4, 4), _t(p, 128, 128, 128, 8, 3, swap=1)]
    else:
        extra = [_t(p, 128, 256, 64, 8, 4), _t(p, 128, 128, 128, 4, 3), _t(p, 64, 256, 128, 4, 3),
                 _t(p, 128, 128, 64, 8, 4), _t(p, 256, 128, 128, 8, 2)]
    out = tactics_for(p)
    return out + [t for t in extra if t not in out]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", default="1,16,64,128,256,1024,2048,8192")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--format", choices=["nvfp4", "mxfp4"], default="nvfp4")
    ap.add_argument("--explore", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--md")
    args = ap.parse_args(argv)
    be = TritonBackend()
    timer = CudaEventTimer()
    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, torch {torch.__version__}, triton "
          f"{__import__('triton').__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    rows = []
    table = MarkdownTable(["M", "N", "K", "fmt", "bf16 us", "triton best us", "vs bf16", "best tactic",
                           "first tactic us", "TFLOP/s", "rel err"])
    for m in parse_ms(args.m):
        n, k = args.n, args.k
        p = fp4core.make_problem(m, n, k, use_nvfp4=args.format == "nvfp4", device="cuda")
        sets = make_sets(p)
        ref = reference_mm(p, sets[0], torch.float32)
        nb = rotation_sets(2 * (m + n) * k, True)
        a16 = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(nb)]
        w16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(nb)]
        bf16 = median(timer.measure(lambda i: torch.matmul(a16[i], w16[i].t()), nb))
        del a16, w16
        out = torch.empty(m, n, dtype=p.out_dtype, device="cuda")
        times = {}
        for tac in (explore(p) if args.explore else be.tactics(p)):
            label = tactic_label(tac)
            t0 = time.perf_counter()
            try:
                out.fill_(float("nan"))
                be.run(p, sets[0], tac, out)
                torch.cuda.synchronize()
                err = relative_error(out, ref)
                us = median(timer.measure(lambda i: be.run(p, sets[i], tac, out), len(sets)))
                times[label] = {"tactic": tac.to_json(), "us": us, "err": err}
                print(f"{m}x{n}x{k} {label}: {us:.1f} us err {err:.1e} ({time.perf_counter() - t0:.1f} s)", flush=True)
            except Exception as exc:  # report and go on
                times[label] = {"tactic": tac.to_json(), "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                print(f"{m}x{n}x{k} {label}: FAILED {times[label]['error']}", flush=True)
        ok = {kk: v for kk, v in times.items() if "us" in v and v["err"] <= 1e-2}
        first = next(iter(times.values()))
        if ok:
            best_label, best = min(ok.items(), key=lambda kv: kv[1]["us"])
            table.add(f"| {m} | {n} | {k} | {args.format} | {bf16:.1f} | {best['us']:.1f} | "
                      f"{bf16 / best['us']:.2f}x | {best_label} | {first.get('us', float('nan')):.1f} | "
                      f"{2 * m * n * k / best['us'] / 1e6:.0f} | {best['err']:.1e} |")
        rows.append({"m": m, "n": n, "k": k, "fmt": args.format, "bf16_us": bf16, "tactics": times})
    print(table.text())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.md:
        table.save(args.md, mode="w")
    return 0


if __name__ == "__main__":
    sys.exit(main())
