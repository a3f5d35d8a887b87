"""Programmatic dependent launch on and off, one layer at a time, beside bf16 nn.Linear.

For each (N, K) layer and batch size M: the bf16 layer and the Fp4Linear variants (W4A4 NVFP4
with dynamic activation scale, W4A16 NVFP4), `auto` tuned first (under the process setting,
``FP4CORE_PDL``; one (layer, M) at a time, just before it is timed, so a capped run keeps its
first rows), then
CUDA-graph replays of back-to-back layer calls (rotating weight copies, as consecutive
layers of a model) timed in alternating batches for: bf16, the FP4 layer captured with PDL
off, the same captured with PDL on. Eager back-to-back calls likewise (device time with the
host ahead). Ratios are bf16 time / layer time of the same interleaved measurement.

    python benchmarks/pdl_ab.py [--m 1,16,64,128] [--shapes 8192x8192,28672x8192,8192x28672]
                                [--variants nvfp4,w4a16-nvfp4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn

from fp4core.dispatch.timing import CudaEventTimer, graph_replay_interleaved_us, median, rotation_sets
from fp4core.kit import pdl
from fp4core.tools.layer_bench import ALL_VARIANTS, _chosen_backend, _variant_layer, tune_layers


def with_pdl(run, on: bool):
    def call(i):
        with pdl.override(on):
            return run(i)
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", default="1,16,64,128")
    ap.add_argument("--shapes", default="8192x8192,28672x8192,8192x28672")
    ap.add_argument("--variants", default="nvfp4,w4a16-nvfp4")
    ap.add_argument("--no-tune", action="store_true", help="time the untuned choice")
    ap.add_argument("--json")
    args = ap.parse_args()
    ms = [int(x) for x in args.m.split(",")]
    layers = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    variants = [v for v in ALL_VARIANTS if v[0] in args.variants.split(",")]
    say = lambda s: print(s, file=sys.stderr, flush=True)
    timer = CudaEventTimer(lead=False)
    rows = []
    print(f"{'M':>5} {'N':>6} {'K':>6}  {'variant':13} {'bf16 us':>8} | {'graph off':>9} {'on':>7} {'on/off':>6} "
          f"{'x off':>6} {'x on':>6} | {'eager off':>9} {'on':>7} {'x off':>6} {'x on':>6}  backend")
    for n, k in layers:
        copies = rotation_sets(2 * n * k, True, max_sets=8)
        torch.manual_seed(n + k)
        bf16 = [nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        fp4 = {label: [_variant_layer(lin, fmt, act) for lin in bf16] for label, fmt, act in variants}
        for m in ms:
            if not args.no_tune:  # one (layer, M) at a time, so a capped run keeps its first rows
                tune_layers([(n, k)], [m], variants, progress=say)
            xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
            with torch.no_grad():
                base = lambda i: bf16[i](xs[i])
                for label, mods in fp4.items():
                    run = lambda i, mods=mods: mods[i](xs[i])
                    runs = [(base, copies), (with_pdl(run, False), copies), (with_pdl(run, True), copies)]
                    g = graph_replay_interleaved_us(runs, timer)
                    e = [median(s) for s in timer.measure_interleaved(runs)]
                    row = dict(m=m, n=n, k=k, variant=label, backend=_chosen_backend(mods[0], m),
                               bf16_graph_us=g[0], graph_off_us=g[1], graph_on_us=g[2],
                               bf16_eager_us=e[0], eager_off_us=e[1], eager_on_us=e[2])
                    rows.append(row)
                    print(f"{m:5d} {n:6d} {k:6d}  {label:13} {g[0]:8.1f} | {g[1]:9.1f} {g[2]:7.1f} {g[1] / g[2]:5.3f}x "
                          f"{g[0] / g[1]:5.2f}x {g[0] / g[2]:5.2f}x | {e[1]:9.1f} {e[2]:7.1f} {e[0] / e[1]:5.2f}x "
                          f"{e[0] / e[2]:5.2f}x  {row['backend']}", flush=True)
                    if args.json:  # after every row: a capped run keeps what it measured
                        with open(args.json, "w") as f:
                            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
            del xs
        del bf16, fp4
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
