"""Does an eager cudnn-backend call block the host? Times 20 back-to-back calls on the host
clock without synchronising (an asynchronous call returns in its host time; a call that
waits for the GPU returns in its GPU time), for the whole call and for its two halves.

    python plugins/fp4-cudnn/scripts/host_block_probe.py [--shape 4096:8192:8192]
"""

from __future__ import annotations

import argparse
import time

import torch

import fp4core
from fp4core.dispatch.synthetic import random_operands
from fp4_cudnn import resources
from fp4_cudnn.dequant import dequantize_pair
from fp4_cudnn.plugin import CudnnBackend


def host_us(fn, calls: int = 20) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4096:8192:8192", help="M:N:K")
    m, n, k = (int(v) for v in ap.parse_args().shape.split(":"))
    be = CudnnBackend()
    p = fp4core.make_problem(m, n, k, device="cuda")
    ops = random_operands(p)
    tac = next(t for t in be.tactics(p) if t.graph == "plain" and t.engine == "eng0")
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    be.run(p, ops, tac, out)
    a_buf = resources.buffer(0, "a_bf16", m * k * 2)[: m * k * 2].view(torch.bfloat16).view(m, k)
    b_buf = resources.buffer(0, "b_bf16", n * k * 2)[: n * k * 2].view(torch.bfloat16).view(n, k)
    deq = lambda: dequantize_pair(ops.a, ops.a_scale, a_buf, p.a_sf_layout, ops.b, ops.b_scale, b_buf, p.fmt)
    pg = be.planned_graph(p, "plain")
    idx = be._plan_index(p, "plain", pg, tac)
    ws_bytes = pg.ensure_built(idx)
    ws = resources.buffer(0, "cudnn_workspace", ws_bytes) if ws_bytes else None
    h = resources.handle(0, torch.cuda.current_stream().cuda_stream)
    mm = lambda: pg.execute(idx, {"A": a_buf.data_ptr(), "B": b_buf.data_ptr()}, out.data_ptr(), ws, h)
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    print(f"{m}x{n}x{k} {torch.cuda.get_device_name()}: host time per call, 20 calls, no sync inside")
    for name, fn in (("whole be.run", lambda: be.run(p, ops, tac, out)), ("dequantize_pair", deq),
                     ("cuDNN execute", mm), ("bf16 torch.mm", lambda: torch.mm(a, w.t(), out=out))):
        fn()
        print(f"  {name:16s} {host_us(fn):8.1f} us")


if __name__ == "__main__":
    main()
