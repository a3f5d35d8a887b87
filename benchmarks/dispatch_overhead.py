"""Host time of fp4core's own call path, no GPU needed: ``mm_fp4`` (plain and prepared weight),
``explain``, a weight-only call and a weight-only ``Fp4Linear`` through a backend whose ``run`` does nothing, so what is
timed is validation, selection and the hand-off to the backend. Uses only the public API, so
the same file times an older tree: ``PYTHONPATH=<old tree> python benchmarks/dispatch_overhead.py``.

Prints one line per path: the median over 7 rounds of the microseconds per call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fp4core


class NoopBackend:
    """Says yes to everything and launches nothing: the call path alone."""

    @fp4core.hookimpl
    def backend_info(self):
        extra = {"activations": ("fp4", "bf16")} if "activations" in fp4core.BackendInfo.__dataclass_fields__ else {}
        return fp4core.BackendInfo(name="noop", version="1", priority={"decode": 1000}, **extra)

    @fp4core.hookimpl
    def supports(self, problem):
        return fp4core.Support.yes()

    @fp4core.hookimpl
    def run(self, problem, operands, tactic, out):
        return None


def per_call_us(fn, calls: int, rounds: int = 7) -> float:
    fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) * 1e6 / calls)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    fp4core.register_backend(NoopBackend())
    torch.manual_seed(0)
    x, w = torch.randn(1, 8192), torch.randn(512, 8192)
    gx, gw = fp4core.compute_global_scale(x), fp4core.compute_global_scale(w)
    a, a_sf = fp4core.nvfp4_quantize(x, gx)
    b, b_sf = fp4core.nvfp4_quantize(w, gw)
    alpha = (1 / (gx * gw)).reshape(1).float()
    out = torch.empty(1, 512, dtype=torch.bfloat16)
    pw = fp4core.prepare(b.T, b_sf.T)
    rows = [("mm_fp4 auto, plain weight, out= given",
             lambda: fp4core.mm_fp4(a, b.T, a_sf, b_sf.T, alpha, torch.bfloat16, out)),
            ("mm_fp4 auto, prepared weight, out= given",
             lambda: fp4core.mm_fp4(a, pw, a_sf, None, alpha, torch.bfloat16, out)),
            ("mm_fp4 auto, prepared weight, new out",
             lambda: fp4core.mm_fp4(a, pw, a_sf, None, alpha))]
    if hasattr(fp4core, "mm_bf16_fp4"):
        xb = x.bfloat16()
        rows.append(("mm_bf16_fp4 auto, out= given", lambda: fp4core.mm_bf16_fp4(xb, b, b_sf, alpha, out=out)))
        lin = torch.nn.Linear(8192, 512, bias=False).bfloat16()
        w16 = fp4core.nn.Fp4Linear.from_linear(lin, activations="bf16")
        rows.append(("Fp4Linear weight-only forward (M = 1)", lambda: w16(xb)))
    print(f"fp4core from {fp4core.__file__}")
    for label, fn in rows:
        assert fn() is not None
        print(f"{label:45s} {per_call_us(fn, args.calls):7.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
