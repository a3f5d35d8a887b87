"""The ``fp4core`` command line: backends, bench, tune, explain, build."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from fp4core import __version__, api
from fp4core.tools.bench import PRESETS, BenchRow, run_bench, shapes_from_args


def _device_line() -> str:
    parts = [f"fp4core {__version__}", f"torch {torch.__version__}"]
    if torch.version.cuda:
        parts.append(f"CUDA {torch.version.cuda}")
    if torch.backends.cudnn.is_available():
        parts.append(f"cuDNN {torch.backends.cudnn.version()}")
    try:
        from fp4core.kit.jit import nvcc_version
        parts.append(f"nvcc {nvcc_version()}")
    except Exception:  # no nvcc: JIT-built plugins will say so themselves
        parts.append("nvcc not found")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        parts.append(f"device {p.name} (sm_{p.major}{p.minor})")
    else:
        parts.append("no CUDA device: GPU backends need one; the torch backend runs on the CPU")
    return ", ".join(parts)


def cmd_backends(args) -> int:
    print(_device_line())
    probe = api.make_problem(128, 4096, 4096)
    for st in api.backends():
        line = f"{st.name:10s} {st.status:9s} {st.package or '-'} {st.version or ''}  [{st.origin or ''}]"
        print(line.rstrip())
        if st.description:
            print(f"           {st.description}")
        if st.unverified_targets:
            print(f"           not verified on hardware: {', '.join(st.unverified_targets)}")
        if st.error:
            print(f"           error: {st.error}")
        if st.status == "loaded":
            from fp4core.dispatch.selector import selector
            ans = selector.registry.get(st.name).supports(probe)
            print(f"           {probe.describe()}: " + ("supported" if ans else f"not supported: {ans.reason}"))
    return 0


def _problem_kwargs(args) -> dict:
    return dict(use_nvfp4=(args.format == "nvfp4"),
                out_dtype=torch.float16 if args.out_dtype == "fp16" else torch.bfloat16,
                use_8x4_sf_layout=args.sf_layout == "8x4", prepared=args.prepared)


def cmd_explain(args) -> int:
    problem = api.make_problem(args.m, args.n, args.k, **_problem_kwargs(args))
    print(api.explain(problem, backend=args.backend))
    return 0


def cmd_tune(args) -> int:
    shapes = shapes_from_args(args)
    kwargs = _problem_kwargs(args)
    from fp4core.dispatch.selector import selector
    if args.in_process:
        problems = [api.make_problem(m, n, k, **kwargs) for m, n, k in shapes]
        results = api.tune(problems, force=args.force)
        from fp4core.dispatch.tuner import tactic_label
        for exp in results:
            c = exp.choice
            print(f"{exp.cache_key}: {c.backend.name} [{tactic_label(c.tactic)}] ({c.source})")
        print(f"tuning cache: {selector.cache.path}")
        return 0
    from fp4core.dispatch.tune_worker import problem_spec, tune_isolated
    for m, n, k in shapes:  # bad sizes fail here, before any worker starts
        api.make_problem(m, n, k, **kwargs)
    results = tune_isolated([problem_spec(m, n, k, **kwargs) for m, n, k in shapes], force=args.force)
    failed = 0
    for (m, n, k), res in zip(shapes, results):
        if "error" in res:
            failed += 1
            print(f"{m}x{n}x{k}: NOT TUNED: {res['error']}")
            continue
        crashed = [label for label, why in res["dropped"].items() if "killed the tuning worker" in why]
        hung = [label for label, why in res["dropped"].items() if "hung the tuning worker" in why]
        note = f"; left out (killed the worker): {', '.join(crashed)}" if crashed else ""
        note += f"; left out (hung): {', '.join(hung)}" if hung else ""
        print(f"{res['key']}: {res['backend']} [{res['tactic']}] ({res['source']}){note}")
    print(f"tuning cache: {selector.cache.path}")
    return 1 if failed else 0


def _fmt_row(r: BenchRow) -> str:
    if r.skipped:
        return f"{r.m:6d} {r.n:6d} {r.k:6d}  {r.backend:12s}  n/a: {r.skipped}"
    if r.error:
        return f"{r.m:6d} {r.n:6d} {r.k:6d}  {r.backend:12s}  {'FAILED: ' + r.error}"
    flag = "" if r.correct else "  WRONG"
    return (f"{r.m:6d} {r.n:6d} {r.k:6d}  {r.backend:12s} {r.median_us:10.1f} {r.spread_us:7.1f} "
            f"{r.tflops:8.1f} {r.gbps:8.0f} {r.speedup:7.2f}x {r.rel_err:9.2e}{flag}")


def cmd_bench_quantize(args) -> int:
    """``bench --quantize``: activation quantization (M x K) against the copy bandwidth."""
    from fp4core.tools.bench_quant import format_rows, run_quant_bench
    cuda = torch.cuda.is_available()
    ms = [int(v) for v in args.m.split(",")] if args.m else ([1, 16, 128, 2048, 8192] if cuda else [1, 64])
    ks = [int(v) for v in args.k.split(",")] if args.k else ([4096, 8192] if cuda else [512])
    print(_device_line(), file=sys.stderr)
    rows, copy_gbps = run_quant_bench([(m, k) for m in ms for k in ks],
                                      progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_rows(rows, copy_gbps))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"copy_gbps": copy_gbps, "rows": [r.__dict__ for r in rows]}, f, indent=1)
    return 1 if any(r.error for r in rows) else 0


def cmd_bench_tactics(args) -> int:
    """``bench --tactics``: every tactic of one backend beside bf16 (which variant wins where)."""
    from fp4core.tools.tactic_sweep import sweep_tactics
    names = [b for b in args.backends.split(",") if b]
    if len(names) != 1:
        raise ValueError(f"--tactics: name exactly one backend with --backends, got {args.backends!r}")
    print(_device_line(), file=sys.stderr)
    out_dtype = torch.float16 if args.out_dtype == "fp16" else torch.bfloat16
    act_dtype = torch.bfloat16 if args.w4a16 else None
    sweeps = [sweep_tactics(names[0], m, n, k, use_nvfp4=(args.format == "nvfp4"), out_dtype=out_dtype,
                            act_dtype=act_dtype,
                            progress=lambda s: print(s, file=sys.stderr, flush=True))
              for m, n, k in shapes_from_args(args)]
    timing = "CUDA-graph replay" if torch.cuda.is_available() else "eager, wall clock"
    print(f"{'M':>6s} {'N':>6s} {'K':>6s}  {'us':>9s} {'vs bf16':>8s}  tactic   ({timing}; "
          f"* fastest, ^ the backend's default)")
    for sw in sweeps:
        print(f"{sw.m:6d} {sw.n:6d} {sw.k:6d}  {sw.baseline_us:9.1f} {1.0:7.2f}x  bf16 torch.matmul")
        for t in sw.timings:
            mark = ("*" if t is sw.best else " ") + ("^" if t is sw.first else " ")
            if t.ok:
                print(f"{sw.m:6d} {sw.n:6d} {sw.k:6d}  {t.us:9.1f} {sw.speedup(t):7.2f}x {mark}{t.label}")
            else:
                print(f"{sw.m:6d} {sw.n:6d} {sw.k:6d}  {'-':>9s} {'-':>8s} {mark}{t.label}: {t.error}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(sw) for sw in sweeps], f, indent=1)
    wrong = [f"{sw.m}x{sw.n}x{sw.k} {t.label}" for sw in sweeps for t in sw.timings if not t.ok]
    if wrong:
        print(f"tactics that failed their check: {wrong}", file=sys.stderr)
        return 1
    return 0


def check_output_paths(args) -> None:
    """Fail before a long run, not after it, when an output file cannot be written."""
    import os
    for flag in ("json", "csv", "plot"):
        path = getattr(args, flag, None)
        if not path:
            continue
        existed = os.path.exists(path)
        try:
            with open(path, "a"):
                pass
        except OSError as exc:
            raise ValueError(f"--{flag}: cannot write {path!r}: {exc.strerror or exc}") from None
        if not existed:
            os.remove(path)


def cmd_bench_layer(args) -> int:
    """``bench --layer``: bf16 nn.Linear against Fp4Linear, eager and in CUDA graphs."""
    from fp4core.tools.layer_bench import ALL_VARIANTS, VARIANTS, W4A16_VARIANTS, format_rows, run_layer_bench
    cuda = torch.cuda.is_available()
    if getattr(args, "shapes_file", None):
        shapes = shapes_from_args(args)
        layers = list(dict.fromkeys((n, k) for _, n, k in shapes))
        ms = sorted({m for m, _, _ in shapes})
    else:
        layers = PRESETS[args.preset] if args.preset else (
            [(int(n), int(k)) for n in (args.n or "8192").split(",") for k in (args.k or "8192").split(",")]
            if cuda or args.n or args.k else [(512, 512)])
        ms = [int(v) for v in args.m.split(",")] if args.m else ([1, 16, 128, 2048] if cuda else [1, 16])
    default = W4A16_VARIANTS if getattr(args, "w4a16", False) else VARIANTS
    variants = default if not args.variants else tuple(
        v for v in ALL_VARIANTS if v[0] in args.variants.split(","))
    if args.variants and len(variants) != len(args.variants.split(",")):
        raise ValueError(f"--variants: expected a comma list of {[v[0] for v in ALL_VARIANTS]}, "
                         f"got {args.variants!r}")
    print(_device_line(), file=sys.stderr)
    progress = lambda s: print(s, file=sys.stderr, flush=True)
    if args.autotune:
        from fp4core.tools.layer_bench import tune_layers
        tune_layers(layers, ms, variants, progress=progress)
    rows = run_layer_bench(layers, ms, variants, progress=progress)
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=1)
    return 1 if any(r.error for r in rows) else 0


def cmd_bench(args) -> int:
    check_output_paths(args)
    if getattr(args, "layer", False):
        return cmd_bench_layer(args)
    if getattr(args, "quantize", False):
        return cmd_bench_quantize(args)
    if getattr(args, "tactics", False):
        return cmd_bench_tactics(args)
    shapes = shapes_from_args(args)
    backends = [b for b in args.backends.split(",") if b] if args.backends else None
    print(_device_line(), file=sys.stderr)
    rows = run_bench(shapes, backends=backends, use_nvfp4=(args.format == "nvfp4"),
                     out_dtype=torch.float16 if args.out_dtype == "fp16" else torch.bfloat16,
                     autotune=args.autotune, progress=lambda s: print(s, file=sys.stderr, flush=True),
                     prepared=args.prepared, act_dtype=torch.bfloat16 if args.w4a16 else None)
    print(f"{'M':>6s} {'N':>6s} {'K':>6s}  {'backend':12s} {'median us':>10s} {'spread':>7s} "
          f"{'TFLOP/s':>8s} {'GB/s':>8s} {'vs bf16':>8s} {'rel err':>9s}")
    for r in rows:
        print(_fmt_row(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=1)
    if args.csv:
        import csv
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].__dict__))
            w.writeheader()
            w.writerows(r.__dict__ for r in rows)
    if args.plot:
        from fp4core.tools.plot import plot_rows
        plot_rows(rows, args.plot, floor_tbps=args.floor_tbps)
        print(f"plot written to {args.plot}", file=sys.stderr)
    wrong = [r for r in rows if not r.correct and r.backend != "bf16"]
    if wrong:
        print(f"WRONG results from: {sorted({r.backend for r in wrong})}", file=sys.stderr)
        return 1
    return 0


def _add_shape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--m", default=None, help="comma list of M (default depends on the device)")
    p.add_argument("--n", default=None, help="comma list of N")
    p.add_argument("--k", default=None, help="comma list of K")
    p.add_argument("--preset", choices=sorted(PRESETS), help="(N, K) layers of a real model")
    p.add_argument("--shapes-file", help="file with one 'M N K' per line")
    _add_format_args(p)


def _add_format_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["nvfp4", "mxfp4"], default="nvfp4")
    p.add_argument("--out-dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--sf-layout", choices=["128x4", "8x4"], default="128x4")
    p.add_argument("--prepared", action="store_true", help="the weight comes from fp4core.prepare")


def cmd_build(args) -> int:
    from fp4core.tools.prebuild import build
    names = [n.strip() for n in args.backends.split(",") if n.strip()] or None
    results = build(names, args.arch or None, progress=True)
    if not results:
        print("no installed backend has kernels to build")
    for name, lines in results.items():
        print(f"{name}: " + ("nothing to build for these architectures" if not lines else f"{len(lines)} built"))
        for line in lines:
            print(f"  {line}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fp4core", description="FP4 GEMM backends: list, benchmark, tune, explain")
    parser.add_argument("--version", action="version", version=f"fp4core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backends", help="installed backends, their status and support on this device")
    p = sub.add_parser("bench", help="time backends against bf16 torch.matmul, with an exact cross-check")
    _add_shape_args(p)
    p.add_argument("--backends", default="", help="comma list (default: every loaded backend); auto always runs")
    p.add_argument("--autotune", action="store_true", help="tune auto before timing it")
    p.add_argument("--tactics", action="store_true",
                   help="time every tactic of the one backend named by --backends beside bf16 "
                        "(CUDA-graph replays on a GPU)")
    p.add_argument("--quantize", action="store_true",
                   help="benchmark activation quantization (M x K, bf16 -> NVFP4/MXFP4) instead of the GEMM")
    p.add_argument("--layer", action="store_true",
                   help="bf16 nn.Linear against Fp4Linear (NVFP4, MXFP4), eager and CUDA-graph replay")
    p.add_argument("--variants", default="",
                   help="--layer: comma list of nvfp4, nvfp4-static, mxfp4, w4a16-nvfp4, w4a16-mxfp4, tinygemm-int4")
    p.add_argument("--w4a16", action="store_true",
                   help="weight-only problems (mm_bf16_fp4: bf16 activations, FP4 weights) beside bf16 "
                        "and torch's int4 tinygemm; with --layer, the weight-only layer variants; with --tactics, "
                        "every tactic on weight-only problems")
    p.add_argument("--json")
    p.add_argument("--csv")
    p.add_argument("--plot", help="PNG: time vs M per backend (log scale) with the bandwidth floor")
    p.add_argument("--floor-tbps", type=float, default=3.0, help="bandwidth for the floor line (TB/s)")
    p = sub.add_parser("tune", help="tune shapes and write the persistent tuning cache")
    _add_shape_args(p)
    p.add_argument("--force", action="store_true", help="re-tune shapes already in the cache")
    p.add_argument("--in-process", action="store_true",
                   help="tune in this process (default: a worker process, restarted without any candidate "
                        "that kills it, e.g. a kernel fault)")
    p = sub.add_parser("explain", help="which backend and tactic auto would use for one shape, and why")
    p.add_argument("--m", type=int, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--backend", default="auto")
    _add_format_args(p)
    p = sub.add_parser("build", help="compile the backends' kernels ahead of time (no GPU needed with --arch)")
    p.add_argument("--arch", action="append", default=[],
                   help="nvcc architecture, repeatable (default: the visible GPUs'), e.g. sm_90a")
    p.add_argument("--backends", default="", help="comma list (default: every backend that builds kernels)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"backends": cmd_backends, "bench": cmd_bench, "tune": cmd_tune, "explain": cmd_explain,
               "build": cmd_build}
    try:
        return handler[args.command](args)
    except (ValueError, LookupError, RuntimeError, OSError) as exc:
        print(f"fp4core {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
