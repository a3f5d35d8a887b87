"""Which cuDNN bf16 matmul graph shapes get which engines on this GPU, and how fast each plan is.

A diagnostic for the SM80-SM90 path: builds a few equivalent graphs for one (M, N, K), lists
every execution plan cuDNN proposes for each and times it on bf16 buffers (matmul only, no
dequantization), next to bf16 cuBLAS on the same buffers.

    python plugins/fp4-cudnn/scripts/probe_graphs.py --shape 4096:8192:8192 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from fp4core.dispatch.timing import CudaEventTimer, median


def variants(cudnn, m, n, k, h):
    """name -> (graph, {role: tensor}, output); roles: A (M,K), W (N,K), alpha, out (M,N)."""
    bf16, f32 = cudnn.data_type.BFLOAT16, cudnn.data_type.FLOAT

    def graph():
        return cudnn.pygraph(io_data_type=bf16, intermediate_data_type=f32, compute_data_type=f32, handle=h)

    def out_rowmajor(t):
        t.set_output(True).set_data_type(bf16).set_dim([1, m, n]).set_stride([m * n, n, 1])
        return t

    made = {}
    # plain: out = A @ W^T, nothing fused.
    g = graph()
    a = g.tensor(name="A", dim=[1, m, k], stride=[m * k, k, 1], data_type=bf16)
    w = g.tensor(name="W", dim=[1, k, n], stride=[k * n, 1, k], data_type=bf16)
    made["plain"] = (g, {"A": a, "W": w}, out_rowmajor(g.matmul(a, w, compute_data_type=f32)))
    # mul: alpha (1,1,1) fp32 multiply after the matmul (what the backend builds).
    for mode in ("mul", "scale"):
        g = graph()
        a = g.tensor(name="A", dim=[1, m, k], stride=[m * k, k, 1], data_type=bf16)
        w = g.tensor(name="W", dim=[1, k, n], stride=[k * n, 1, k], data_type=bf16)
        al = g.tensor(name="alpha", dim=[1, 1, 1], stride=[1, 1, 1], data_type=f32)
        mm = g.matmul(a, w, compute_data_type=f32)
        mm.set_data_type(f32)
        o = g.mul(a=mm, b=al, compute_data_type=f32) if mode == "mul" else g.scale(input=mm, scale=al, compute_data_type=f32)
        made[mode] = (g, {"A": a, "W": w, "alpha": al}, out_rowmajor(o))
    # swapped: out^T (N, M) = W @ A^T, written column-major into the same (M, N) row-major out.
    g = graph()
    w = g.tensor(name="W", dim=[1, n, k], stride=[n * k, k, 1], data_type=bf16)
    a = g.tensor(name="A", dim=[1, k, m], stride=[m * k, 1, k], data_type=bf16)
    o = g.matmul(w, a, compute_data_type=f32)
    o.set_output(True).set_data_type(bf16).set_dim([1, n, m]).set_stride([m * n, 1, n])
    made["swapped"] = (g, {"A": a, "W": w}, o)
    # swapped with the alpha multiply.
    g = graph()
    w = g.tensor(name="W", dim=[1, n, k], stride=[n * k, k, 1], data_type=bf16)
    a = g.tensor(name="A", dim=[1, k, m], stride=[m * k, 1, k], data_type=bf16)
    al = g.tensor(name="alpha", dim=[1, 1, 1], stride=[1, 1, 1], data_type=f32)
    mm = g.matmul(w, a, compute_data_type=f32)
    mm.set_data_type(f32)
    o = g.mul(a=mm, b=al, compute_data_type=f32)
    o.set_output(True).set_data_type(bf16).set_dim([1, n, m]).set_stride([m * n, 1, n])
    made["swapped_mul"] = (g, {"A": a, "W": w, "alpha": al}, o)
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", action="append", default=None)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import cudnn

    shapes = [tuple(int(x) for x in s.split(":")) for s in (args.shape or ["4096:8192:8192"])]
    timer = CudaEventTimer(warmup_ms=10, sample_ms=2.0, samples=7)
    h = cudnn.create_handle()
    cudnn.set_stream(h, torch.cuda.current_stream().cuda_stream)
    report = []
    for m, n, k in shapes:
        A = torch.randn(m, k, device="cuda").to(torch.bfloat16)
        W = torch.randn(n, k, device="cuda").to(torch.bfloat16)
        alpha = torch.full((1,), 0.5, device="cuda")
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        cublas = median(timer.measure(lambda i: torch.mm(A, W.t(), out=out), 1))
        ref = (A.float() @ W.float().t())
        print(f"{m}x{n}x{k}: cuBLAS {cublas:.1f} us", flush=True)
        for name, (g, ins, o) in variants(cudnn, m, n, k, h).items():
            row = {"shape": [m, n, k], "variant": name, "cublas_us": cublas, "plans": []}
            try:
                g.validate()
                g.build_operation_graph()
                g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
                g.check_support()
                count = g.get_execution_plan_count()
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                print(f"  {name}: {row['error']}", flush=True)
                report.append(row)
                continue
            data = {"A": A, "W": W, "alpha": alpha}
            pack = {t.get_uid(): data[role].data_ptr() for role, t in ins.items()}
            pack[o.get_uid()] = out.data_ptr()
            for i in range(count):
                pname = g.get_plan_name_at_index(i)
                try:
                    g.build_plan_at_index(i)
                    need = g.get_workspace_size_plan_at_index(i)
                    assert need <= ws.numel(), need
                    run = lambda _: g.execute_plan_at_index(pack, ws, index=i, handle=h)
                    out.fill_(float("nan"))
                    run(0)
                    torch.cuda.synchronize()
                    scale = 0.5 if "alpha" in ins else 1.0
                    err = float((out.float() - scale * ref).norm() / (scale * ref).norm())
                    us = median(timer.measure(run, 1))
                    row["plans"].append({"i": i, "name": pname, "us": us, "err": err})
                except Exception as exc:
                    row["plans"].append({"i": i, "name": pname, "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
            ok = [p for p in row["plans"] if "us" in p]
            best = min(ok, key=lambda p: p["us"]) if ok else None
            print(f"  {name}: {count} plans, best {best and best['name']} {best and round(best['us'], 1)} us "
                  f"(cuBLAS/best {best and round(cublas / best['us'], 3)}); "
                  + ", ".join(f"{p['name']}={p.get('us', -1):.0f}" for p in row["plans"]), flush=True)
            report.append(row)
        del A, W, ref, out, ws
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
