"""Fused dynamic quantization (fp4-trtllm, one kernel) against quantizer + GEMM (two), beside bf16.

For each small W4A4 layer (M x N x K, NVFP4 weights, activations quantized per call with a
global scale from their own amax, as ``Fp4Linear``'s default): every split-K ring tactic of
the trtllm plugin is run twice, as ``ActivationQuantizer`` + the ring kernel (what the layer
path runs today) and as ``launcher.bind_fused_quant`` (the quantization inside the GEMM), on
the same prepared weight. The outputs must be bit-identical (outputs poisoned with NaN first;
random, NaN-holding, all-zero, tiny and huge inputs, bf16 and fp16). Then CUDA-graph replays
of back-to-back calls over rotating weight copies, timed in alternating batches: bf16
``nn.Linear``, the ``Fp4Linear`` layer as ``auto`` runs it (tuned unless --no-tune), the same
layer with the fused path allowed (``FUSED_QUANT_MAX_ELEMS``; it fuses where auto chose a trtllm
ring tactic; a * marks rows where it did not), and the best two-kernel and best fused tactic.
Ratios are bf16 time / time.

    python benchmarks/fused_quant_ab.py [--shapes 1x2880x1024,7x2880x1024,...] [--no-tune] [--json f]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn

from fp4core import api
from fp4core.dispatch.timing import graph_replay_interleaved_us, rotation_sets
from fp4core.formats.fp4 import Fp4Format
from fp4core.formats.kernels.quantize_triton import quantize_activation
from fp4core.formats.layouts import SfLayout
from fp4core.pytorch import linear_plan
from fp4core.pytorch.nn import Fp4Linear
from fp4core.tools.layer_bench import tune_layers

from fp4_trtllm import launcher
from fp4_trtllm.layout import prepare_weight
from fp4_trtllm.plugin import SPLITK, TrtllmBackend

DEFAULT_SHAPES = ("1x2880x1024,7x2880x1024,16x2880x1024,1x7168x2048,7x7168x2048,32x7168x2048,"
                  "1x1280x2880,1x8192x8192,16x8192x8192")


def _inputs(m: int, k: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Activations that exercise every branch of the quantizer's recipe."""
    g = torch.randn(m, k, device="cuda", dtype=torch.float32)
    cases = {"randn": g, "zeros": torch.zeros_like(g), "tiny": g * 1e-6, "huge": g * 3e4,
             "mixed": g * torch.logspace(-4, 4, k, device="cuda")}
    nan = g.clone()
    nan[0, 5] = float("nan")
    nan[-1, -1] = float("inf")
    cases["nan_inf"] = nan
    if dtype == torch.bfloat16:
        cases["subnormal_gs"] = g * 1e-38  # 1 / amax overflows: every block marked
    return {name: x.to(dtype) for name, x in cases.items()}


def _two_kernel(prep, m, n, k, tac, wgs, device):
    gemm = launcher.bind(w=prep[0], w_sf=prep[1], m=m, n=n, k=k, mx=False, a_sf_8x4=False,
                         a_sf_cols=(k // 16 + 3) // 4 * 4, t=tac.t, warps=tac.warps, out_fp16=False,
                         device=device, splitk=True, splits=tac.split_k, ring=True)

    def run(x, out):
        a, a_sf, alpha = quantize_activation(x, Fp4Format.NVFP4, SfLayout.layout_128x4, None, wgs)
        gemm(a, a_sf.view(-1), alpha, out)
    return run


def _fused(prep, m, n, k, tac, dtype, device):
    launch = launcher.bind_fused_quant(w=prep[0], w_sf=prep[1], m=m, n=n, k=k, t=tac.t, warps=tac.warps,
                                       splits=tac.split_k, act_dtype=dtype, out_fp16=dtype == torch.float16,
                                       device=device)
    return launch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES)
    ap.add_argument("--no-tune", action="store_true", help="time the layer's untuned choice")
    ap.add_argument("--json")
    args = ap.parse_args()
    say = lambda s: print(s, file=sys.stderr, flush=True)
    device = torch.device("cuda", torch.cuda.current_device())
    backend = TrtllmBackend()
    rows, bad = [], 0
    print(f"{'M':>4} {'N':>6} {'K':>6} | {'bf16 us':>8} {'layer':>7} {'x':>5} {'+fused':>7} {'x':>5} | "
          f"{'2-kernel':>8} {'x':>5} {'fused':>7} {'x':>5} | exact  best fused tactic")
    for shape in args.shapes.split(","):
        m, n, k = (int(v) for v in shape.split("x"))
        if m > launcher.FUSED_QUANT_MAX_M:
            say(f"skip {shape}: M > {launcher.FUSED_QUANT_MAX_M}")
            continue
        torch.manual_seed(m * 7 + n + k)
        copies = rotation_sets(2 * n * k, True, max_sets=8)
        lins = [nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        layers = [Fp4Linear.from_linear(lin) for lin in lins]
        layers_f = [Fp4Linear.from_linear(lin) for lin in lins]
        if not args.no_tune:
            tune_layers([(n, k)], [m], variants=(("nvfp4", "nvfp4", "dynamic"),), progress=say)
        preps = [prepare_weight(f.weight_fp4, f.weight_scale.view(-1), Fp4Format.NVFP4, code="f16") for f in layers]
        wgs = [f.weight_global_scale for f in layers]
        problem = api.make_problem(m, n, k, use_nvfp4=True, has_alpha=True, prepared=True, device="cuda")
        tactics = [t for t in backend.tactics(problem) if t.kernel == SPLITK and t.ring]

        # exactness: every tactic, every input kind, bf16 and fp16
        exact = True
        for dtype in (torch.bfloat16, torch.float16):
            for name, x in _inputs(m, k, dtype).items():
                for tac in tactics:
                    got = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
                    ref16 = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
                    gemm = launcher.bind(w=preps[0][0], w_sf=preps[0][1], m=m, n=n, k=k, mx=False,
                                         a_sf_8x4=False, a_sf_cols=(k // 16 + 3) // 4 * 4, t=tac.t,
                                         warps=tac.warps, out_fp16=dtype == torch.float16, device=device,
                                         splitk=True, splits=tac.split_k, ring=True)
                    a, a_sf, alpha = quantize_activation(x, Fp4Format.NVFP4, SfLayout.layout_128x4, None, wgs[0])
                    gemm(a, a_sf.view(-1), alpha, ref16)
                    _fused(preps[0], m, n, k, tac, dtype, device)(x, None, wgs[0], None, got)
                    torch.cuda.synchronize()
                    same = torch.equal(ref16.view(torch.int16), got.view(torch.int16))
                    if not same:
                        exact = False
                        bad += 1
                        diff = (ref16.view(torch.int16) != got.view(torch.int16)).sum().item()
                        say(f"MISMATCH {shape} {dtype} input={name} tactic={tac.label()}: {diff} of {m * n} outputs differ")

        # timing: back-to-back calls over the weight copies, in CUDA graphs
        xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        outs = [torch.empty(m, n, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        def fused_layer(i):  # its plans are made (on the warm-up call) with the fused path allowed
            old, linear_plan.FUSED_QUANT_MAX_ELEMS = linear_plan.FUSED_QUANT_MAX_ELEMS, 1 << 20
            try:
                return layers_f[i](xs[i])
            finally:
                linear_plan.FUSED_QUANT_MAX_ELEMS = old

        runs = [(lambda i: lins[i](xs[i]), copies), (lambda i: layers[i](xs[i]), copies), (fused_layer, copies)]
        for tac in tactics:
            two = [_two_kernel(preps[i], m, n, k, tac, wgs[i], device) for i in range(copies)]
            fused = [_fused(preps[i], m, n, k, tac, torch.bfloat16, device) for i in range(copies)]
            runs.append((lambda i, two=two: two[i](xs[i], outs[i]), copies))
            runs.append((lambda i, fused=fused: fused[i](xs[i], None, wgs[i], None, outs[i]), copies))
        us = graph_replay_interleaved_us(runs)
        bf16_us, layer_us, layer_f_us = us[0], us[1], us[2]
        two_us, fused_us = us[3::2], us[4::2]
        plan_f = layers_f[0]._plans.get((m, torch.bfloat16))
        bt = min(range(len(tactics)), key=lambda i: two_us[i])
        bf = min(range(len(tactics)), key=lambda i: fused_us[i])
        row = dict(m=m, n=n, k=k, bf16_us=bf16_us, layer_us=layer_us, layer_fused_us=layer_f_us,
                   layer_backend=plan_f.backend.name if plan_f else None,
                   layer_tactic=plan_f.tactic.label() if plan_f else None,
                   layer_fused=bool(plan_f and plan_f.fused), two_kernel_us=two_us[bt],
                   two_kernel_tactic=tactics[bt].label(), fused_us=fused_us[bf], fused_tactic=tactics[bf].label(),
                   exact=exact, per_tactic={t.label(): (a, b) for t, a, b in zip(tactics, two_us, fused_us)})
        rows.append(row)
        print(f"{m:>4} {n:>6} {k:>6} | {bf16_us:8.2f} {layer_us:7.2f} {bf16_us / layer_us:5.2f} "
              f"{layer_f_us:7.2f} {bf16_us / layer_f_us:5.2f}{'' if row['layer_fused'] else '*'}| "
              f"{two_us[bt]:8.2f} {bf16_us / two_us[bt]:5.2f} {fused_us[bf]:7.2f} {bf16_us / fused_us[bf]:5.2f} | "
              f"{'yes' if exact else 'NO':5}  {tactics[bf].label()}  (layer: {row['layer_backend']} "
              f"{row['layer_tactic']})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if bad:
        print(f"{bad} mismatching (shape, dtype, input, tactic) cases", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
