"""Time the cudnn backend against bf16 cuBLAS on the same shapes, in one process.

For every (M, N, K): the bf16 cuBLAS baseline ``torch.mm(a_bf16, w_bf16.t(), out=o)`` (the
``a @ w.T`` kernel, without allocating the output), the backend's default plan (cuDNN's first
heuristic plan that builds), every other plan (the best is reported), and the two halves of
the backend: the fused dequantization alone and the bf16 matmul graph alone. Inputs rotate
over enough sets to defeat L2 (fp4core.dispatch.timing.rotation_sets); times are medians of CUDA-event
samples (fp4core.dispatch.timing.CudaEventTimer). Each shape is also checked against the exact
reference (float32 on the GPU) before timing.

    python plugins/fp4-cudnn/scripts/bench.py --json out.json [--mn 2048:8192 ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time

import torch

import fp4core
from fp4core.dispatch.selector import selector
from fp4core.formats.reference import TOLERANCE, reference_mm, relative_error
from fp4core.dispatch.timing import CudaEventTimer, copy_bandwidth_gbps, median, rotation_sets
from fp4core.dispatch.tuner import make_sets

DEFAULT_SHAPES = [(m, n, 8192) for n in (8192, 28672) for m in (128, 2048, 4096, 8192)]


def timed(run, n_sets, timer) -> float:
    return median(timer.measure(run, n_sets))


def baseline_us(m, n, k, timer) -> float:
    per_set = (m * k + n * k + m * n) * 2
    n_sets = rotation_sets(per_set, True, budget_bytes=3 << 30)
    g = torch.Generator(device="cuda").manual_seed(7)
    sets = [(torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16),
             torch.randn(n, k, device="cuda", generator=g).to(torch.bfloat16)) for _ in range(n_sets)]
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    us = timed(lambda i: torch.mm(sets[i][0], sets[i][1].t(), out=out), n_sets, timer)
    del sets
    return us


def dequant_sweep(timer, configs) -> list[dict]:
    """Dequantization rate of a 28672 x 8192 NVFP4 weight per tile configuration."""
    from fp4_cudnn.dequant import dequantize_pair
    from fp4core.formats.fp4 import Fp4Format
    from fp4core.formats.layouts import SfLayout

    n, k = 28672, 8192
    problem = fp4core.make_problem(1, n, k, device="cuda")
    sets = make_sets(problem, n_sets=2)
    out = torch.empty(n, k, dtype=torch.bfloat16, device="cuda")
    moved = n * k * (0.5 + 1 / 16) + n * k * 2
    rows = []
    for cfg in configs:
        us = timed(lambda i: dequantize_pair(None, None, None, SfLayout.layout_128x4, sets[i].b,
                                             sets[i].b_scale, out, Fp4Format.NVFP4, cfg), 2, timer)
        rows.append({**cfg, "us": us, "TBps": moved / (us * 1e-6) / 1e12})
        print(f"  dequant {cfg}: {us:.1f} us, {rows[-1]['TBps']:.2f} TB/s", flush=True)
    return rows


def native_probe() -> str:
    """How far cuDNN gets with the SM100 block-scaled graph on this device."""
    from fp4_cudnn import resources
    from fp4_cudnn.graphs import GraphRefused, PlannedGraph, native_fp4_graph
    from fp4core.formats.fp4 import Fp4Format

    h = resources.graph_handle(torch.cuda.current_device())
    try:
        pg = PlannedGraph.create(native_fp4_graph(256, 1024, 1024, Fp4Format.NVFP4, torch.bfloat16, True, h))
        return f"planned: {pg.count} plans"
    except GraphRefused as exc:
        return f"refused at {exc.stage}: {exc.message[:400]}"


def bench_shape(be, m, n, k, timer, all_plans=True) -> dict:
    from fp4_cudnn import resources
    from fp4_cudnn.dequant import dequantize_pair

    problem = fp4core.make_problem(m, n, k, device="cuda")
    sets = make_sets(problem)
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    flop = 2.0 * m * n * k
    row = {"m": m, "n": n, "k": k, "sets": len(sets)}

    t0 = time.perf_counter()
    tactics = be.tactics(problem)
    be.run(problem, sets[0], tactics[0], out)
    torch.cuda.synchronize()
    row["first_call_s"] = time.perf_counter() - t0
    ref = reference_mm(problem, sets[0], torch.float32)
    row["rel_err"] = relative_error(out, ref)
    del ref
    assert row["rel_err"] <= TOLERANCE, row

    row["baseline_us"] = baseline_us(m, n, k, timer)
    row["default_us"] = timed(lambda i: be.run(problem, sets[i], tactics[0], out), len(sets), timer)
    row["default_plan"] = f"{tactics[0].graph}:{tactics[0].engine}"
    per_plan = {0: row["default_us"]}
    for j, t in enumerate(tactics[1:] if all_plans else [], start=1):
        try:
            per_plan[j] = timed(lambda i: be.run(problem, sets[i], t, out), len(sets), timer)
        except Exception as exc:  # a plan that does not build
            per_plan[j] = None
            row.setdefault("refused", []).append(f"{t.graph}:{t.plan}: {str(exc)[:120]}")
    ok = {j: us for j, us in per_plan.items() if us is not None}
    best = min(ok, key=ok.get)
    bt = tactics[best]
    row.update(best_us=ok[best], best_plan=f"{bt.graph}:{bt.engine}", n_plans=len(tactics),
               plans_us={f"{tactics[j].graph}:{tactics[j].engine}": us for j, us in per_plan.items()})
    for variant in {t.graph for t in tactics}:
        vus = [us for j, us in ok.items() if tactics[j].graph == variant]
        if vus:
            row[f"best_{variant}_us"] = min(vus)

    # The two halves: dequantization alone, and the matmul graph alone on the bf16 buffers.
    dev = torch.cuda.current_device()
    a_buf = resources.buffer(dev, "a_bf16", m * k * 2)[: m * k * 2].view(torch.bfloat16).view(m, k)
    b_buf = resources.buffer(dev, "b_bf16", n * k * 2)[: n * k * 2].view(torch.bfloat16).view(n, k)
    row["dequant_us"] = timed(lambda i: dequantize_pair(sets[i].a, sets[i].a_scale, a_buf, problem.a_sf_layout,
                                                        sets[i].b, sets[i].b_scale, b_buf, problem.fmt),
                              len(sets), timer)
    pg = be.plugin.planned_graph(problem, bt.graph)
    index = pg.index_of(bt)
    ws = pg.ensure_built(index)
    wsb = resources.buffer(dev, "cudnn_workspace", ws) if ws else None
    h = resources.handle(dev, torch.cuda.current_stream().cuda_stream)
    ptrs = {"A": a_buf.data_ptr(), "B": b_buf.data_ptr()}
    if "alpha" in pg.uids:
        ptrs["alpha"] = sets[0].alpha.data_ptr()
    row["gemm_only_us"] = timed(lambda i: pg.execute(index, ptrs, out.data_ptr(), wsb, h), 1, timer)
    moved = (m + n) * k * (0.5 + 1 / 16) + (m + n) * k * 2
    row["dequant_TBps"] = moved / (row["dequant_us"] * 1e-6) / 1e12
    for key in ("baseline", "default", "best", "gemm_only"):
        row[f"{key}_tflops"] = flop / (row[f"{key}_us"] * 1e-6) / 1e12
    row["ratio_default"] = row["baseline_us"] / row["default_us"]
    row["ratio_best"] = row["baseline_us"] / row["best_us"]
    del sets
    torch.cuda.empty_cache()
    return row


def table(rows) -> str:
    lines = ["| M | N | K | cuBLAS bf16 us (TFLOP/s) | cudnn default us (TFLOP/s) | cudnn best us (TFLOP/s) "
             "| best/cuBLAS | default/cuBLAS | best epilogue-graph us | dequant us (TB/s) | matmul only us "
             "| best plan | plans | rel err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        epi = r.get("best_epilogue_us")
        lines.append(
            f"| {r['m']} | {r['n']} | {r['k']} | {r['baseline_us']:.1f} ({r['baseline_tflops']:.0f}) "
            f"| {r['default_us']:.1f} ({r['default_tflops']:.0f}) | {r['best_us']:.1f} ({r['best_tflops']:.0f}) "
            f"| {r['ratio_best']:.3f} | {r['ratio_default']:.3f} | {'-' if epi is None else f'{epi:.1f}'} "
            f"| {r['dequant_us']:.1f} ({r['dequant_TBps']:.2f}) | {r['gemm_only_us']:.1f} | {r['best_plan']} "
            f"| {r['n_plans']} | {r['rel_err']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--shape", action="append", help="M:N:K (repeatable); default: the issue's sweep")
    ap.add_argument("--no-all-plans", action="store_true", help="time only the default plan")
    ap.add_argument("--dequant-sweep", action="store_true", help="also sweep dequantization tile configs")
    args = ap.parse_args(argv)
    shapes = [tuple(int(x) for x in s.split(":")) for s in args.shape] if args.shape else DEFAULT_SHAPES
    be = selector.registry.get("cudnn")
    timer = CudaEventTimer(warmup_ms=15, sample_ms=2.0, samples=10)
    from fp4_cudnn import env
    meta = {"command": " ".join([sys.executable.split("/")[-1]] + sys.argv),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "cudnn": env.format_version(env.cudnn_version() or 0), "python": platform.python_version()}
    try:
        import triton
        meta["triton"] = triton.__version__
    except Exception:
        pass
    meta["copy_TBps"] = copy_bandwidth_gbps(timer=timer) / 1e3
    meta["native_fp4_graph"] = native_probe()
    print(json.dumps(meta), flush=True)
    result = {"meta": meta, "rows": []}
    if args.dequant_sweep:
        configs = [{"BR": br, "KBYTES": kb, "VB": vb, "num_warps": w} for br, kb, vb, w in
                   [(32, 256, 4, 8), (32, 256, 8, 8), (16, 256, 4, 4), (64, 128, 4, 8), (32, 512, 4, 8),
                    (64, 256, 4, 8), (16, 512, 4, 8), (32, 128, 4, 4)]]
        result["dequant_sweep"] = dequant_sweep(timer, configs)
    for m, n, k in shapes:
        row = bench_shape(be, m, n, k, timer, all_plans=not args.no_all_plans)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    print(table(result["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
