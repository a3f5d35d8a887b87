"""GPU tests of the cudnn backend (marked ``gpu``; skipped without CUDA).

Correctness is always against fp4core's exact reference (float64), on fresh random data,
into a NaN-poisoned output, with ||out - ref|| / ||ref|| <= 1e-2.
"""

from __future__ import annotations

import pytest
import torch

import fp4core
from fp4core.dispatch.selector import selector
from fp4core.formats.fp4 import Fp4Format
from fp4core.formats.layouts import SfLayout, padded_scale_shape, scale_offsets
from fp4core.formats.quantize import dequantize
from fp4core.formats.reference import TOLERANCE, reference_mm, relative_error
from fp4core.testing import device_allocations, quantize_weight
from fp4core.dispatch.validation import build_problem

from fp4_cudnn.plugin import CudnnTactic

pytestmark = pytest.mark.gpu

N, K = 272, 512          # N not a multiple of 128: exercises padded scale rows of B
ODD_M = (1, 7, 129)


@pytest.fixture(scope="module")
def backend():
    be = selector.registry.get("cudnn")
    assert be is not None, [b for b in fp4core.backends()]
    answer = be.supports(fp4core.make_problem(128, N, K, device="cuda"))
    assert answer.ok, answer.reason
    return be


@pytest.fixture
def gen():
    g = torch.Generator(device="cuda")
    g.seed()  # fresh data every run
    return g


def quantized(m, n, k, nv, gen, alpha=True, sf8x4=False):
    """FlashInfer-style mm_fp4 arguments made by fp4core's quantizers from random data."""
    a = torch.randn(m, k, device="cuda", generator=gen) * 3
    b = torch.randn(n, k, device="cuda", generator=gen)
    a_layout = SfLayout.layout_8x4 if sf8x4 else SfLayout.layout_128x4
    if nv:
        ga, gb = fp4core.compute_global_scale(a), fp4core.compute_global_scale(b)
        a_fp4, a_sf = fp4core.nvfp4_quantize(a, ga, sfLayout=a_layout)
        b_fp4, b_sf = fp4core.nvfp4_quantize(b, gb)
        al = (1.0 / (ga * gb)).float() if alpha else None
    else:
        a_fp4, a_sf = fp4core.mxfp4_quantize(a, sfLayout=a_layout)
        b_fp4, b_sf = fp4core.mxfp4_quantize(b)
        al = torch.full((1,), 0.75, device="cuda") if alpha else None
    return dict(a=a_fp4, b=b_fp4.T, a_descale=a_sf, b_descale=b_sf.T, alpha=al,
                block_size=16 if nv else 32, use_nvfp4=nv, use_8x4_sf_layout=sf8x4)


def problem_and_ops(args, out_dtype):
    return build_problem(args["a"], args["b"], args["a_descale"], args["b_descale"], args["alpha"],
                         out_dtype, None, args["block_size"], args["use_8x4_sf_layout"],
                         args["use_nvfp4"], True)


def poisoned(m, n, dtype):
    return torch.full((m, n), float("nan"), dtype=dtype, device="cuda")


def check(out, problem, ops, what=""):
    torch.cuda.synchronize()
    err = relative_error(out, reference_mm(problem, ops))
    assert err <= TOLERANCE, f"{what}: relative error {err:.3g}"
    return err


# -- the dequantization kernel -------------------------------------------------------------
def _random_scales(rows, k, fmt, layout, gen, finite=False):
    """Scale bytes over the whole format range (``finite``: a range whose products stay finite)."""
    cols = k // fmt.block_size
    prow, pcol = padded_scale_shape(rows, cols, layout)
    if fmt is Fp4Format.NVFP4:  # every E4M3 byte but the two NaNs, signs and subnormals included
        vals = torch.randint(0, 256, (rows, cols), dtype=torch.uint8, device="cuda", generator=gen)
        vals = torch.where((vals & 0x7F) == 0x7F, torch.full_like(vals, 0x38), vals)
    elif finite:  # E8M0 2^-7 .. 2^7
        vals = torch.randint(120, 135, (rows, cols), dtype=torch.uint8, device="cuda", generator=gen)
    else:  # E8M0 2^-127 .. 2^127 (0..2 are fp32 subnormals; large ones overflow bf16 to inf)
        vals = torch.randint(0, 255, (rows, cols), dtype=torch.uint8, device="cuda", generator=gen)
    flat = torch.zeros(prow * pcol, dtype=torch.uint8, device="cuda")
    flat[scale_offsets(rows, cols, layout, "cuda").reshape(-1)] = vals.reshape(-1)
    return flat


@pytest.mark.parametrize("fmt", list(Fp4Format))
@pytest.mark.parametrize("layout", [SfLayout.layout_128x4, SfLayout.layout_8x4])
@pytest.mark.parametrize("rows_a,rows_b,k", [(1, 8, 64), (7, 136, 320), (129, 272, 1024), (300, 4096, 4096)])
def test_dequant_kernel_byte_exact(fmt, layout, rows_a, rows_b, k, gen):
    from fp4_cudnn.dequant import dequantize_pair

    a = torch.randint(0, 256, (rows_a, k // 2), dtype=torch.uint8, device="cuda", generator=gen)
    b = torch.randint(0, 256, (rows_b, k // 2), dtype=torch.uint8, device="cuda", generator=gen)
    asf = _random_scales(rows_a, k, fmt, layout, gen)
    bsf = _random_scales(rows_b, k, fmt, SfLayout.layout_128x4, gen)
    ao, bo = poisoned(rows_a, k, torch.bfloat16), poisoned(rows_b, k, torch.bfloat16)
    dequantize_pair(a, asf, ao, layout, b, bsf, bo, fmt)
    nv = fmt is Fp4Format.NVFP4
    ra = dequantize(a, asf, use_nvfp4=nv, sfLayout=layout, dtype=torch.bfloat16)
    rb = dequantize(b, bsf, use_nvfp4=nv, sfLayout=SfLayout.layout_128x4, dtype=torch.bfloat16)
    assert torch.equal(ao.view(torch.int16), ra.view(torch.int16))
    assert torch.equal(bo.view(torch.int16), rb.view(torch.int16))


@pytest.mark.parametrize("fmt", list(Fp4Format))
def test_dequant_kernel_alpha_folded_into_a(fmt, gen):
    """The "plain" graph's A: bf16(fp32(code * scale) * alpha), bit for bit."""
    from fp4_cudnn.dequant import dequantize_pair

    m, n, k = 129, 136, 512
    a = torch.randint(0, 256, (m, k // 2), dtype=torch.uint8, device="cuda", generator=gen)
    b = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda", generator=gen)
    asf = _random_scales(m, k, fmt, SfLayout.layout_128x4, gen, finite=True)
    bsf = _random_scales(n, k, fmt, SfLayout.layout_128x4, gen, finite=True)
    alpha = torch.rand(1, device="cuda", generator=gen) * 1e-3 + 1e-4
    ao, bo = poisoned(m, k, torch.bfloat16), poisoned(n, k, torch.bfloat16)
    dequantize_pair(a, asf, ao, SfLayout.layout_128x4, b, bsf, bo, fmt, alpha_a=alpha)
    nv = fmt is Fp4Format.NVFP4
    ra = (dequantize(a, asf, use_nvfp4=nv, dtype=torch.float32) * alpha).to(torch.bfloat16)
    rb = dequantize(b, bsf, use_nvfp4=nv, dtype=torch.bfloat16)
    assert torch.equal(ao.view(torch.int16), ra.view(torch.int16))
    assert torch.equal(bo.view(torch.int16), rb.view(torch.int16))  # B is never scaled


@pytest.mark.parametrize("fmt", list(Fp4Format))
def test_dequant_kernel_nan_scale_gives_nan_block(fmt, gen):
    from fp4_cudnn.dequant import dequantize_pair

    k = 256
    b = torch.randint(0, 256, (128, k // 2), dtype=torch.uint8, device="cuda", generator=gen)
    bsf = _random_scales(128, k, fmt, SfLayout.layout_128x4, gen, finite=True)
    bsf[scale_offsets(128, k // fmt.block_size, "128x4", "cuda")[5, 2]] = 0x7F if fmt is Fp4Format.NVFP4 else 0xFF
    bo = poisoned(128, k, torch.bfloat16).zero_()
    dequantize_pair(None, None, None, SfLayout.layout_128x4, b, bsf, bo, fmt)
    blk = fmt.block_size
    assert torch.isnan(bo[5, 2 * blk:3 * blk].float()).all()
    assert torch.isfinite(bo[:5].float()).all() and torch.isfinite(bo[6:].float()).all()


# -- the backend ---------------------------------------------------------------------------
@pytest.mark.parametrize("nv", [True, False], ids=["nvfp4", "mxfp4"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("m", ODD_M)
def test_mm_fp4_cudnn_correct(backend, nv, out_dtype, m, gen):
    args = quantized(m, N, K, nv, gen, alpha=nv or m != 7)  # MXFP4 at m=7 runs without alpha
    out = poisoned(m, N, out_dtype)
    res = fp4core.mm_fp4(**args, out_dtype=out_dtype, out=out, backend="cudnn")
    assert res is out
    problem, ops = problem_and_ops(args, out_dtype)
    check(out, problem, ops, f"m={m}")


@pytest.mark.parametrize("nv", [True, False], ids=["nvfp4", "mxfp4"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("m", ODD_M)
def test_every_tactic_correct(backend, nv, out_dtype, m, gen):
    args = quantized(m, N, K, nv, gen)
    problem, ops = problem_and_ops(args, out_dtype)
    ref = reference_mm(problem, ops)
    tactics = backend.tactics(problem)
    assert len(tactics) >= 1 and all(t.plan is not None and t.engine is not None for t in tactics)
    ran, refused = 0, []
    for tactic in tactics:
        out = poisoned(m, N, out_dtype)
        try:
            backend.run(problem, ops, tactic, out)
        except Exception as exc:  # a plan cuDNN enumerates but cannot build: the tuner drops it
            from fp4_cudnn.graphs import GraphRefused
            assert isinstance(exc, GraphRefused) and exc.stage == "build_plan", exc
            refused.append((tactic.graph, tactic.plan))
            continue
        torch.cuda.synchronize()
        err = relative_error(out, ref)
        assert err <= TOLERANCE, f"{tactic}: relative error {err:.3g}"
        ran += 1
    assert ran >= 1
    assert (tactics[0].graph, tactics[0].plan) not in refused  # the default builds
    print(f"m={m} {len(tactics)} plans, {ran} ran, refused to build: {refused}")


def test_both_graph_variants_offered_and_exact_alpha_switch(backend, gen, monkeypatch):
    args = quantized(129, N, K, True, gen)
    problem, ops = problem_and_ops(args, torch.bfloat16)
    graphs = [t.graph for t in backend.tactics(problem)]
    assert graphs[0] == "plain" and "epilogue" in graphs
    monkeypatch.setenv("FP4_CUDNN_EXACT_ALPHA", "1")
    tactics = backend.tactics(problem)
    assert {t.graph for t in tactics} == {"epilogue"}
    out = poisoned(129, N, torch.bfloat16)
    backend.run(problem, ops, CudnnTactic(graph="plain", plan=0), out)  # overridden by the switch
    check(out, problem, ops, "exact alpha")


def test_8x4_activation_scales(backend, gen):
    for nv in (True, False):
        args = quantized(129, N, K, nv, gen, sf8x4=True)
        out = poisoned(129, N, torch.bfloat16)
        fp4core.mm_fp4(**args, out=out, backend="cudnn")
        check(out, *problem_and_ops(args, torch.bfloat16), "8x4")


def test_auto_uses_cudnn_and_is_correct(backend, gen):
    args = quantized(256, N, K, True, gen)
    problem, ops = problem_and_ops(args, torch.bfloat16)
    exp = fp4core.explain(problem)
    assert "cudnn" in exp.candidates, exp
    assert exp.candidates.index("cudnn") < exp.candidates.index("torch")
    out = poisoned(256, N, torch.bfloat16)
    fp4core.mm_fp4(**args, out=out, backend="auto")
    check(out, problem, ops, "auto")


def test_autotune_times_plans_and_stays_correct(backend, gen):
    args = quantized(512, 1024, 1024, True, gen)
    problem, ops = problem_and_ops(args, torch.bfloat16)
    with fp4core.autotune(verbose=False, save=False):
        out = fp4core.mm_fp4(**args, backend="auto")
    exp = fp4core.explain(problem)
    assert exp.cache_entry is not None and "cudnn" in exp.cache_entry.per_backend, exp
    check(out, problem, ops, "tuned")
    out2 = poisoned(512, 1024, torch.bfloat16)
    fp4core.mm_fp4(**args, out=out2, backend="auto")  # the cached choice
    check(out2, problem, ops, "cached choice")


def test_prepared_weight_path(backend, gen):
    args = quantized(64, N, K, True, gen)
    w = fp4core.prepare(args["b"], args["b_descale"], block_size=16)
    out = poisoned(64, N, torch.bfloat16)
    fp4core.mm_fp4(args["a"], w, args["a_descale"], None, args["alpha"], out=out, backend="cudnn")
    check(out, *problem_and_ops(args, torch.bfloat16), "prepared")


def test_cuda_graph_capture_and_replay(backend, gen):
    m = 129
    args = quantized(m, N, K, True, gen)
    out = poisoned(m, N, torch.bfloat16)
    fp4core.mm_fp4(**args, out=out, backend="cudnn")  # warm-up: graph, plan, buffers
    torch.cuda.synchronize()
    eager = out.clone()
    out.fill_(float("nan"))
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fp4core.mm_fp4(**args, out=out, backend="cudnn")
    g.replay()
    torch.cuda.synchronize()
    assert relative_error(out, eager) <= 1e-3
    problem, ops = problem_and_ops(args, torch.bfloat16)
    check(out, problem, ops, "replay")
    # New values in the same input buffers: the replay must read them, not stale copies.
    fresh = quantized(m, N, K, True, gen)
    for name in ("a", "b", "a_descale", "b_descale", "alpha"):
        args[name].copy_(fresh[name])
    out.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    check(out, *problem_and_ops(fresh, torch.bfloat16), "replay on new inputs")


def test_no_device_allocation_after_first_call(backend, gen):
    args = quantized(129, N, K, False, gen)
    out = poisoned(129, N, torch.float16)
    fp4core.mm_fp4(**args, out_dtype=torch.float16, out=out, backend="cudnn")
    with device_allocations() as repeated:
        for _ in range(5):
            fp4core.mm_fp4(**args, out_dtype=torch.float16, out=out, backend="cudnn")
    assert repeated.allocations == 0, f"allocated on repeated calls: {repeated}"
    check(out, *problem_and_ops(args, torch.float16), "after reuse")


def test_native_fp4_graph_up_to_refusal(backend):
    """SM100+ graph (FP4 operands, block_scale_dequantize, F8_128x4 scales, matmul, alpha).

    On SM90 cuDNN has no engine for it: the graph must be declared, validated and lowered,
    and be refused only where engines are chosen. On SM100+ it must plan and build."""
    from fp4_cudnn import resources
    from fp4_cudnn.graphs import GraphRefused, PlannedGraph, native_fp4_graph

    sm = fp4core.make_problem(128, N, K, device="cuda").device.sm
    dev = torch.cuda.current_device()
    for fmt in Fp4Format:
        for has_alpha in (True, False):
            spec = native_fp4_graph(256, N, K, fmt, torch.bfloat16, has_alpha, resources.graph_handle(dev))
            assert set(spec.inputs) >= {"A", "B", "SFA", "SFB"}
            try:
                pg = PlannedGraph.create(spec)
            except GraphRefused as exc:
                print(f"{fmt.value} alpha={has_alpha}: refused at {exc.stage}: {exc.message[:300]}")
                assert sm < 100, exc
                assert exc.stage in ("create_execution_plans", "check_support"), exc
                continue
            assert sm >= 100, "cuDNN planned a block-scaled FP4 graph below SM100"
            pg.first_buildable()


@pytest.mark.parametrize("nv", [True, False])
@pytest.mark.parametrize("m", ODD_M)
def test_weight_only_every_plan_matches_the_reference(nv, m):
    """W4A16: the weight decoded alone, bf16 activations straight into the
    graph, alpha in the epilogue; every tactic checked against the exact reference."""
    from fp4core.testing import check_backend
    for has_alpha in (True, False):
        problem = fp4core.make_problem(m, N, K, use_nvfp4=nv, has_alpha=has_alpha, device="cuda",
                                       act_dtype=torch.bfloat16)
        results = check_backend("cudnn", problem, seed=m)
        assert results and all(r.error <= TOLERANCE for r in results)
    g = torch.Generator(device="cuda")
    g.seed()
    x = torch.randn(m, K, device="cuda", generator=g).to(torch.bfloat16)
    w = torch.randn(N, K, device="cuda", generator=g)
    b, bsf, alpha = quantize_weight(w, nv)
    out = torch.full((m, N), float("nan"), dtype=torch.bfloat16, device="cuda")
    fp4core.mm_bf16_fp4(x, b, bsf, alpha, backend="cudnn", out=out, block_size=16 if nv else 32)
    wd = dequantize(b, bsf, use_nvfp4=nv, dtype=torch.float64)
    ref = x.double() @ wd.T * (alpha.double() if alpha is not None else 1.0)
    assert relative_error(out, ref) <= TOLERANCE
