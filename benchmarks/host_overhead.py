"""Host time of the layer path, measured apart from GPU time (issue 15, item 2).

For one shape (default M = 1, 8192 x 8192, NVFP4) it reports the host microseconds per call
of each step a model pays on the CPU: one bf16 cuBLAS launch (the floor), a bare Triton
launch, activation quantization (dynamic: two launches; static: one), ``fp4core.mm_fp4``
with ``auto`` on a plain and on a prepared weight (tuned first), the backend's ``run`` hook
alone, the ``torch.ops.fp4core.mm_fp4`` op, and ``Fp4Linear.forward`` eager and under
``torch.compile`` (and, beside each, the bf16 ``nn.Linear``), and the weight-only (W4A16)
``mm_bf16_fp4`` and ``Fp4Linear(activations="bf16")``. Host time is the submit loop's wall time while the GPU is kept busy by
a device-side spin, so the numbers exclude any waiting for the GPU; GPU time of the same
calls comes from CUDA-graph replay. Prints a table; ``--json`` writes it.

    python benchmarks/host_overhead.py [--m 1] [--n 8192] [--k 8192] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import fp4core
import fp4core.dispatch.tuner
from fp4core.dispatch.timing import device_spin, graph_replay_us


def host_us(call, calls: int = 300) -> float:
    """Median over 5 rounds of the per-call submit time with the GPU busy meanwhile."""
    call()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        device_spin(calls * 60.0)  # keep the GPU busy for longer than the loop takes
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        rounds.append((time.perf_counter() - t0) * 1e6 / calls)
        torch.cuda.synchronize()
    return sorted(rounds)[len(rounds) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--json")
    args = ap.parse_args()
    m, n, k = args.m, args.n, args.k
    dev = "cuda"
    from fp4core.formats.fp4 import Fp4Format
    from fp4core.formats.kernels import quantize_triton as qt
    from fp4core.formats.layouts import SfLayout
    import triton
    import triton.language as tl

    @triton.jit
    def _noop(x_ptr):
        pass

    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    lin = torch.nn.Linear(k, n, bias=False, device=dev, dtype=torch.bfloat16)
    fl = fp4core.pytorch.nn.Fp4Linear.from_linear(lin)
    fl_static = fp4core.pytorch.nn.Fp4Linear.from_linear(lin)
    fl_static.set_input_global_scale(fp4core.compute_global_scale(x))
    fl_w16 = fp4core.pytorch.nn.Fp4Linear.from_linear(lin, activations="bf16")  # weight-only (W4A16)
    wgs = fl.weight_global_scale
    a, a_sf, gs = fp4core.quantize_fp4(x)
    alpha = 1.0 / (gs * wgs)
    b, b_sf = fl.weight_fp4, fl.weight_scale
    pw = fp4core.prepare(b.T, b_sf.T)
    pw16, _, alpha16 = fp4core.prepare_bf16_fp4_weights(b, b_sf, 1.0 / wgs)
    with fp4core.autotune(verbose=False):
        fp4core.mm_fp4(a, b.T, a_sf, b_sf.T, alpha)
        fp4core.mm_fp4(a, pw, a_sf, None, alpha)
        fl(x)
        fp4core.mm_bf16_fp4(x, pw16, None, alpha16)
        fl_w16(x)
    choice = fp4core.explain(a, pw, a_sf, None, alpha).choice
    be, tactic = choice.backend, choice.tactic
    from fp4core.dispatch.selector import selector
    from fp4core.dispatch.problem import Operands
    problem = fp4core.explain(a, pw, a_sf, None, alpha).problem
    rp, ops = selector.weight_for(be, problem, Operands(a, a_sf.reshape(-1), None, None, alpha), pw)
    out = torch.empty(m, n, device=dev, dtype=torch.bfloat16)
    w16 = lin.weight
    # torch.compile (default mode): the layer is one fp4core::linear_fp4 op running the plans
    c_lin = torch.compile(lin, fullgraph=True, dynamic=False)
    c_fl = torch.compile(fl, fullgraph=True, dynamic=False)
    with torch.no_grad():
        c_lin(x), c_fl(x)
    steps = {
        "bf16 torch.matmul (one cuBLAS launch)": lambda: torch.matmul(x, w16.t()),
        "bf16 nn.Linear.forward": lambda: lin(x),
        "bare Triton launch": lambda: _noop[(1,)](x),
        "quantize, dynamic scale + alpha (2 launches)":
            lambda: qt.quantize_activation(x, Fp4Format.NVFP4, SfLayout.layout_128x4, None, wgs),
        "quantize, static scale (1 launch)":
            lambda: qt.quantize_activation(x, Fp4Format.NVFP4, SfLayout.layout_128x4, fl_static.input_global_scale, None),
        f"backend run hook alone ({be.name})": lambda: be.run(rp, ops, tactic, out),
        "mm_fp4 auto, plain weight": lambda: fp4core.mm_fp4(a, b.T, a_sf, b_sf.T, alpha),
        "mm_fp4 auto, prepared weight": lambda: fp4core.mm_fp4(a, pw, a_sf, None, alpha),
        "mm_fp4 auto, prepared, out= given": lambda: fp4core.mm_fp4(a, pw, a_sf, None, alpha, out=out),
        "torch.ops.fp4core.mm_fp4 (op path)": lambda: fp4core.pytorch.ops.mm_fp4(a, pw, a_sf, None, alpha),
        "Fp4Linear.forward (dynamic scale)": lambda: fl(x),
        "Fp4Linear.forward (static scale)": lambda: fl_static(x),
        "mm_bf16_fp4 auto, prepared weight (W4A16)": lambda: fp4core.mm_bf16_fp4(x, pw16, None, alpha16),
        "Fp4Linear.forward, weight-only (W4A16)": lambda: fl_w16(x),
        "bf16 nn.Linear, torch.compile": lambda: c_lin(x),
        "Fp4Linear, torch.compile (dynamic scale)": lambda: c_fl(x),
    }
    gpu = {
        "bf16 nn.Linear.forward": lambda i: lin(x),
        "mm_fp4 auto, prepared weight": lambda i: fp4core.mm_fp4(a, pw, a_sf, None, alpha, out=out),
        "quantize, dynamic scale + alpha (2 launches)":
            lambda i: qt.quantize_activation(x, Fp4Format.NVFP4, SfLayout.layout_128x4, None, wgs),
        "Fp4Linear.forward (dynamic scale)": lambda i: fl(x),
        "Fp4Linear.forward (static scale)": lambda i: fl_static(x),
        "Fp4Linear.forward, weight-only (W4A16)": lambda i: fl_w16(x),
        "bf16 nn.Linear, torch.compile": lambda i: c_lin(x),
        "Fp4Linear, torch.compile (dynamic scale)": lambda i: c_fl(x),
    }
    rows = []
    print(f"host time per call, M={m} N={n} K={k} NVFP4, auto -> {be.name} [{fp4core.dispatch.tuner.tactic_label(tactic)}]")
    print(f"{'step':48s} {'host us':>8s} {'GPU us':>8s}")
    with torch.no_grad():
        for name, call in steps.items():
            h = host_us(call)
            g = graph_replay_us(gpu[name], 1) if name in gpu else float("nan")
            rows.append({"step": name, "host_us": h, "gpu_us": g})
            print(f"{name:48s} {h:8.1f} {g:8.1f}")
    import cProfile
    import io
    import pstats
    for label, call in (("Fp4Linear.forward (dynamic)", lambda: fl(x)),
                        ("mm_fp4 auto, prepared weight", lambda: fp4core.mm_fp4(a, pw, a_sf, None, alpha))):
        prof = cProfile.Profile()
        with torch.no_grad():
            prof.runcall(lambda: [call() for _ in range(300)])
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(14)
        print(f"\n{label}, 300 calls under cProfile, by own time:")
        print("\n".join(text.getvalue().splitlines()[6:]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"m": m, "n": n, "k": k, "backend": be.name, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
