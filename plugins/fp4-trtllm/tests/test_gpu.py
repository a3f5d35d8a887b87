"""GPU checks (marked ``gpu``): every tactic against the exact float64 reference, odd shapes,
both formats and A-scale layouts, the fp4core.prepare + mm_fp4 paths, FlashInfer-style
inputs, determinism and CUDA-graph capture."""

import dataclasses

import pytest
import torch

import fp4core
from fp4core.formats.reference import TOLERANCE, reference_mm, relative_error
from fp4core.dispatch.synthetic import random_operands
from fp4core.testing import check_back_to_back, quantize_weight, run_repeatedly

from fp4_trtllm.layout import unshuffle_flashinfer  # noqa: F401  (FlashInfer path below)
from fp4_trtllm import prepare_flashinfer_shuffled
from fp4_trtllm.plugin import TrtllmBackend, TrtllmTactic

pytestmark = pytest.mark.gpu

# (N, K): gpt-oss-like small layers and a DeepSeek-like one; K multiple of 64 but not 128 too.
SHAPES = [(1280, 2880), (2880, 1024), (7168, 2048)]
MS = [1, 3, 7, 33, 64]


def _problem(m, n, k, nv=True, e8=False, out=torch.bfloat16):
    return fp4core.make_problem(m, n, k, use_nvfp4=nv, use_8x4_sf_layout=e8, out_dtype=out,
                                prepared=True, device="cuda")


def _prepared(be, problem, ops):
    w = be.prepare(problem.with_m(None), fp4core.Operands(None, None, ops.b, ops.b_scale))
    return w.with_activation(ops.a, ops.a_scale, ops.alpha)


def _check(be, problem, ops, tactic):
    ref = reference_mm(problem, ops)  # float64 on the GPU
    run_ops = _prepared(be, problem, ops)
    out = torch.full((problem.m, problem.n), float("nan"), dtype=problem.out_dtype, device="cuda")
    be.run(problem, run_ops, tactic, out)
    torch.cuda.synchronize()
    err = relative_error(out, ref)
    assert err <= TOLERANCE, f"{problem.describe()} tactic {tactic}: rel err {err:.3g}"
    return err


@pytest.mark.parametrize("nv", [True, False], ids=["nvfp4", "mxfp4"])
@pytest.mark.parametrize("e8", [False, True], ids=["a128x4", "a8x4"])
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", MS)
def test_every_tactic_exact(m, n, k, nv, e8):
    be = TrtllmBackend()
    problem = _problem(m, n, k, nv, e8)
    gen = torch.Generator(device="cuda").manual_seed(m * 7919 + n + k + nv + 2 * e8)
    ops = random_operands(problem, device="cuda", generator=gen)
    for tactic in be.tactics(problem) + [TrtllmTactic("streamk", t=1, warps=8, ctas=1)]:
        _check(be, problem, ops, tactic)


@pytest.mark.parametrize("lo,hi", [(1, 8), (1, 0x30), (0x70, 0x7F)], ids=["subnormal", "small", "largest"])
@pytest.mark.parametrize("m", [1, 33])
def test_nvfp4_weight_scale_extremes(m, lo, hi):
    """NVFP4 weights decode to value * 2^-14 (fp16 subnormals for every |value * scale| < 1):
    with only E4M3 subnormal or tiny block scales every weight operand is an fp16 subnormal,
    which must survive HMUL2 and the MMA exactly; the largest scales (up to 448) must not
    overflow."""
    be = TrtllmBackend()
    problem = _problem(m, 1280, 2880)
    gen = torch.Generator(device="cuda").manual_seed(m + lo)
    ops = random_operands(problem, device="cuda", generator=gen)
    sf = torch.randint(lo, hi, ops.b_scale.shape, generator=gen, device="cuda", dtype=torch.int32)
    ops = dataclasses.replace(ops, b_scale=sf.to(torch.uint8))
    for tactic in be.tactics(problem)[:3] + [TrtllmTactic("streamk", t=2, warps=4, ctas=0)]:
        assert _check(be, problem, ops, tactic) < 4e-3


@pytest.mark.parametrize("nv", [True, False], ids=["nvfp4", "mxfp4"])
@pytest.mark.parametrize("m", [1, 16, 100, 256])
def test_fp16_out_and_large_m(m, nv):
    be = TrtllmBackend()
    problem = _problem(m, 1040, 640, nv, out=torch.float16)  # N not a multiple of 32
    ops = random_operands(problem, device="cuda", generator=torch.Generator(device="cuda").manual_seed(m))
    for tactic in be.tactics(problem)[:3]:
        _check(be, problem, ops, tactic)


def _quantized(m, n, k, nv, e8=False, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    a = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    b = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16)
    layout = "8x4" if e8 else "128x4"
    if nv:
        ga, gb = fp4core.compute_global_scale(a), fp4core.compute_global_scale(b)
        a4, asf = fp4core.nvfp4_quantize(a, ga, sfLayout=layout)
        b4, bsf = fp4core.nvfp4_quantize(b, gb)
        alpha = (1.0 / (ga * gb)).float()
    else:
        a4, asf = fp4core.mxfp4_quantize(a, sfLayout=layout)
        b4, bsf = fp4core.mxfp4_quantize(b)
        alpha = None
    return a4, asf, b4, bsf, alpha


@pytest.mark.parametrize("nv", [True, False], ids=["nvfp4", "mxfp4"])
@pytest.mark.parametrize("e8", [False, True], ids=["a128x4", "a8x4"])
@pytest.mark.parametrize("m", [1, 7, 64])
def test_prepare_then_mm_fp4_auto_and_named(m, nv, e8):
    n, k = 2880, 1024
    a4, asf, b4, bsf, alpha = _quantized(m, n, k, nv, e8, seed=m)
    bs = 16 if nv else 32
    ref = fp4core.mm_fp4(a4, b4.T, asf, bsf.T, alpha, block_size=bs, use_8x4_sf_layout=e8,
                         backend="torch", use_nvfp4=nv).float()
    w = fp4core.prepare(b4.T, bsf.T, use_nvfp4=nv, use_8x4_sf_layout=e8)
    assert "trtllm" in w.by_backend, w.skipped
    for backend in ("auto", "trtllm"):
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
        fp4core.mm_fp4(a4, w, asf, None, alpha, out=out, block_size=bs, use_8x4_sf_layout=e8,
                       backend=backend, use_nvfp4=nv)
        assert relative_error(out, ref) <= TOLERANCE
    exp = fp4core.explain(a4, w, asf, None, alpha, block_size=bs, use_8x4_sf_layout=e8, use_nvfp4=nv)
    if m <= 16:
        assert exp.choice.backend.name == "trtllm", str(exp)
    # A plain weight with backend="trtllm" is prepared per call and still right.
    out = fp4core.mm_fp4(a4, b4.T, asf, bsf.T, alpha, block_size=bs, use_8x4_sf_layout=e8,
                         backend="trtllm", use_nvfp4=nv)
    assert relative_error(out, ref) <= TOLERANCE


def _flashinfer_shuffle_rows(x, bs=32):
    row_map = [(q % (bs // 8)) * 8 + q // (bs // 8) for q in range(bs)]
    idx = torch.empty(x.shape[0], dtype=torch.long)
    for old in range(x.shape[0]):
        idx[(old // bs) * bs + row_map[old % bs]] = old
    return x[idx.to(x.device)]


def test_flashinfer_style_inputs():
    m, n, k = 8, 2880, 1024
    a4, asf, b4, bsf, alpha = _quantized(m, n, k, True, True, seed=5)
    ref = fp4core.mm_fp4(a4, b4.T, asf, bsf.T, alpha, use_8x4_sf_layout=True, backend="torch").float()
    lin = fp4core.unswizzle_scales(bsf, n, k // 16)
    b_shuf = _flashinfer_shuffle_rows(b4)
    sf_shuf = fp4core.swizzle_scales(_flashinfer_shuffle_rows(lin), "128x4")
    w = prepare_flashinfer_shuffled(b_shuf.T, sf_shuf.T, use_8x4_sf_layout=True)
    out = fp4core.mm_fp4(a4, w, asf, None, alpha, use_8x4_sf_layout=True, backend="trtllm")
    assert relative_error(out, ref) <= TOLERANCE


@pytest.mark.parametrize("nv", [True, False], ids=["nvfp4", "mxfp4"])
def test_deterministic(nv):
    be = TrtllmBackend()
    problem = _problem(16, 7168, 8192, nv)
    ops = _prepared(be, problem, random_operands(problem, device="cuda"))
    for tactic in be.tactics(problem):
        outs = run_repeatedly(be, problem, ops, tactic, times=3)
        assert all(torch.equal(outs[0].view(torch.int16), o.view(torch.int16)) for o in outs[1:]), tactic


def test_cuda_graph_capture_replay():
    m, n, k = 4, 8192, 4096
    a4, asf, b4, bsf, alpha = _quantized(m, n, k, True, seed=11)
    w = fp4core.prepare(b4.T, bsf.T)
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    fp4core.mm_fp4(a4, w, asf, None, alpha, out=out, backend="trtllm")  # warm up: build, workspace
    eager = out.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        with torch.cuda.graph(graph):
            fp4core.mm_fp4(a4, w, asf, None, alpha, out=out, backend="trtllm")
    torch.cuda.current_stream().wait_stream(s)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
    # New activations copied into the captured buffers: replay follows them.
    a2, asf2, _, _, _ = _quantized(m, n, k, True, seed=12)
    a4.copy_(a2)
    asf.copy_(asf2)
    graph.replay()
    want = fp4core.mm_fp4(a4, w, asf, None, alpha, backend="trtllm")
    torch.cuda.synchronize()
    assert torch.equal(out, want)


# ---- weight-only (W4A16): bf16/fp16 activations, the split-K ring kernel's ACT variants ------
W16_KINDS = [(True, torch.bfloat16), (True, torch.float16), (False, torch.bfloat16)]


def _w16_problem(m, n, k, nv, act, out=None):
    return fp4core.make_problem(m, n, k, use_nvfp4=nv, out_dtype=out or act, prepared=True,
                                device="cuda", act_dtype=act)


@pytest.mark.parametrize("nv,act", W16_KINDS, ids=["nvfp4-bf16", "nvfp4-fp16", "mxfp4-bf16"])
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", [1, 7, 33, 64])
def test_w4a16_every_tactic_exact(m, n, k, nv, act):
    """Every weight-only tactic against the float64 reference of a x dequant(b), output
    poisoned first (rel. error <= 1e-2 is the issue's bound; exact dequantization and fp32
    accumulation give the final rounding only)."""
    be = TrtllmBackend()
    problem = _w16_problem(m, n, k, nv, act)
    gen = torch.Generator(device="cuda").manual_seed(m * 31 + n + k + nv)
    ops = random_operands(problem, device="cuda", generator=gen)
    assert ops.a.dtype == act and ops.a_scale is None
    tactics = be.tactics(problem)
    assert tactics
    for tactic in tactics:
        assert _check(be, problem, ops, tactic) < 5e-3


@pytest.mark.parametrize("lo,hi", [(1, 8), (0x70, 0x7F)], ids=["subnormal", "largest"])
def test_w4a16_bf16_weight_scale_extremes(lo, hi):
    """The bf16 path scales E4M3 by 2^119: the smallest (subnormal) and largest block scales
    must give exact operands, neither flushed nor overflowed."""
    be = TrtllmBackend()
    problem = _w16_problem(5, 1280, 2880, True, torch.bfloat16)
    gen = torch.Generator(device="cuda").manual_seed(lo)
    ops = random_operands(problem, device="cuda", generator=gen)
    sf = torch.randint(lo, hi, ops.b_scale.shape, generator=gen, device="cuda", dtype=torch.int32)
    ops = dataclasses.replace(ops, b_scale=sf.to(torch.uint8))
    for tactic in be.tactics(problem)[:3]:
        assert _check(be, problem, ops, tactic) < 5e-3


@pytest.mark.parametrize("nv,act", W16_KINDS, ids=["nvfp4-bf16", "nvfp4-fp16", "mxfp4-bf16"])
def test_w4a16_mm_bf16_fp4_auto_and_named_are_exact(nv, act):
    """The public path: prepare_bf16_fp4_weights then mm_bf16_fp4, auto and named, against
    the torch backend. Untuned, auto takes trtllm at decode sizes unless fp4-cutlass is
    installed and takes the problem (its "w4a16:decode" priority ranks it first)."""
    m, n, k = 4, 2880, 1024
    g = torch.Generator(device="cuda").manual_seed(9)
    x = torch.randn(m, k, device="cuda", generator=g).to(act)
    w = torch.randn(n, k, device="cuda", generator=g)
    b, bsf, alpha = quantize_weight(w, nv)
    bs = 16 if nv else 32
    ref = fp4core.mm_bf16_fp4(x, b, bsf, alpha, block_size=bs, backend="torch").double()
    pw, _, alpha2 = fp4core.prepare_bf16_fp4_weights(b, bsf, alpha, block_size=bs)
    assert "trtllm" in pw.by_backend, pw.skipped
    for backend in ("auto", "trtllm"):
        out = torch.full((m, n), float("nan"), dtype=act, device="cuda")
        fp4core.mm_bf16_fp4(x, pw, None, alpha2, out=out, block_size=bs, backend=backend)
        assert relative_error(out, ref) <= 5e-3, backend
    exp = fp4core.explain(fp4core.make_problem(m, n, k, use_nvfp4=nv, out_dtype=act, prepared=True,
                                               device="cuda", act_dtype=act))
    want = "cutlass" if "cutlass" in exp.candidates else "trtllm"
    assert exp.choice.backend.name == want, str(exp)
    assert exp.candidates.index("trtllm") == (1 if want == "cutlass" else 0), str(exp)


def test_w4a16_deterministic_and_graph_replay():
    """Bit-identical repeats (split-K sums in a fixed order) and CUDA-graph replay that follows
    new activations copied into the captured buffer."""
    be = TrtllmBackend()
    problem = _w16_problem(16, 7168, 8192, True, torch.bfloat16)
    src = random_operands(problem, device="cuda", generator=torch.Generator(device="cuda").manual_seed(3))
    ops = _prepared(be, problem, src)
    assert ops.a is src.a  # the kernel reads the caller's activation buffer
    for tactic in be.tactics(problem)[:4]:
        outs = run_repeatedly(be, problem, ops, tactic, times=3)
        assert all(torch.equal(outs[0].view(torch.int16), o.view(torch.int16)) for o in outs[1:]), tactic
    tactic = be.tactics(problem)[0]
    out = torch.empty(16, 7168, dtype=torch.bfloat16, device="cuda")
    be.run(problem, ops, tactic, out)  # warm-up: library, workspace
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.cuda.graph(graph):
        be.run(problem, ops, tactic, out)
    torch.cuda.current_stream().wait_stream(s)
    fresh = torch.randn(src.a.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(4))
    src.a.copy_(fresh.to(src.a.dtype))
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert relative_error(out, reference_mm(problem, src)) <= 5e-3


# ---- programmatic dependent launch: back-to-back launches, eager without PDL vs graph with it --
PDL_TACTICS_EXTRA = [TrtllmTactic("streamk", t=1, warps=8, ctas=1), TrtllmTactic("streamk", t=2, warps=4, ctas=0),
                     TrtllmTactic("splitk", t=2, warps=4, split_k=4, ring=0),
                     TrtllmTactic("splitk", t=4, warps=4, split_k=8, ring=1)]


@pytest.mark.parametrize("m", [1, 16])
def test_pdl_w4a4_back_to_back_is_bit_identical(m):
    """Four calls on different activations, each into its own output and then two into one
    shared output (write after write), sharing the split-K workspace and counters: with PDL a
    call may start while the previous one drains, and must still wait before touching them."""
    be = TrtllmBackend()
    problem = _problem(m, 2048, 4096)
    gen = torch.Generator(device="cuda").manual_seed(40 + m)
    src = [random_operands(problem, device="cuda", generator=gen) for _ in range(4)]
    w = be.prepare(problem.with_m(None), fp4core.Operands(None, None, src[0].b, src[0].b_scale))
    ops = [w.with_activation(o.a, o.a_scale, src[0].alpha) for o in src]
    outs = [torch.empty(m, 2048, dtype=torch.bfloat16, device="cuda") for _ in range(5)]
    for tactic in be.tactics(problem) + PDL_TACTICS_EXTRA:
        calls = [lambda i=i: be.run(problem, ops[i], tactic, outs[i]) for i in range(4)]
        calls += [lambda: be.run(problem, ops[0], tactic, outs[4]), lambda: be.run(problem, ops[1], tactic, outs[4])]
        for c in calls:  # warm-up: library, workspace
            c()
        check_back_to_back(calls, outs, label=f"m={m} {tactic}")


@pytest.mark.parametrize("nv,act", W16_KINDS, ids=["nvfp4-bf16", "nvfp4-fp16", "mxfp4-bf16"])
@pytest.mark.parametrize("m", [1, 16])
def test_pdl_w4a16_chain_is_bit_identical(m, nv, act):
    """A chain of four weight-only layers, each reading the previous one's output (N = K, the
    weight scaled so values stay O(1)): with PDL each kernel may start while the one before
    drains and must wait before reading its activations or writing its output."""
    be = TrtllmBackend()
    n = k = 2048
    problem = _w16_problem(m, n, k, nv, act)
    g = torch.Generator(device="cuda").manual_seed(50 + m + nv)
    b, bsf, alpha = quantize_weight(torch.randn(n, k, device="cuda", generator=g) / k ** 0.5, nv)
    w = be.prepare(problem.with_m(None), fp4core.Operands(None, None, b, bsf, alpha))
    ys = [torch.randn(m, k, device="cuda", generator=g).to(act)] + \
         [torch.empty(m, n, dtype=act, device="cuda") for _ in range(4)]
    ops = [w.with_activation(ys[i], None, alpha) for i in range(4)]
    for tactic in be.tactics(problem):
        calls = [lambda i=i: be.run(problem, ops[i], tactic, ys[i + 1]) for i in range(4)]
        for c in calls:
            c()
        torch.cuda.synchronize()
        assert torch.isfinite(ys[4]).all(), "the chain overflowed: the check needs finite values"
        check_back_to_back(calls, ys[1:], label=f"m={m} {tactic}")


# ---- quantization inside the GEMM (launcher.bind_fused_quant, the bind_quantizing hook) ---------
FUSED_SHAPES = [(1, 2880, 1024), (7, 1280, 2880), (16, 7168, 2048), (32, 2048, 512)]


def _fused_setup(m, n, k, act, seed):
    """(backend, W4A4 problem with `act` output, prepared weight, encode global scale of the weight)."""
    from fp4core.formats.quantize import compute_global_scale, nvfp4_quantize
    be = TrtllmBackend()
    problem = _problem(m, n, k, out=act)
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=g)
    gw = compute_global_scale(w)
    b, bsf = nvfp4_quantize(w, gw)
    prepared = be.prepare(problem.with_m(None), fp4core.Operands(None, None, b, bsf))
    return be, problem, prepared, gw, (b, bsf), g


def _two_kernel_and_fused(be, problem, prepared, gw, x, tactic, gs=None):
    """(quantizer + ring GEMM output, fused kernel output) for one tactic, outputs poisoned
    first; dynamic global scale, or the static ``gs`` with alpha = 1 / (gs * gw)."""
    from fp4core.formats.kernels.quantize_triton import quantize_activation
    from fp4core.formats.layouts import SfLayout
    from fp4_trtllm import launcher
    m, n, k = problem.m, problem.n, problem.k
    two = torch.full((m, n), float("nan"), dtype=problem.out_dtype, device="cuda")
    fused = torch.full((m, n), float("nan"), dtype=problem.out_dtype, device="cuda")
    a, a_sf, alpha = quantize_activation(x, fp4core.Fp4Format.NVFP4, SfLayout.layout_128x4, gs, gw)
    be.run(problem, prepared.with_activation(a, a_sf.view(-1), alpha), tactic, two)
    launch = launcher.bind_fused_quant(w=prepared.b, w_sf=prepared.b_scale, m=m, n=n, k=k, t=tactic.t,
                                       warps=tactic.warps, splits=tactic.split_k or 1, act_dtype=x.dtype,
                                       out_fp16=problem.out_dtype == torch.float16, device=x.device)
    if gs is None:
        launch(x, None, gw, None, fused)
    else:
        launch(x, gs, None, alpha, fused)
    torch.cuda.synchronize()
    return two, fused


def _ring_tactics(be, problem):
    return [t for t in be.tactics(problem) if t.kernel == "splitk" and t.ring]


@pytest.mark.parametrize("scale", ["dynamic", "static"])
@pytest.mark.parametrize("act", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("m,n,k", FUSED_SHAPES)
def test_fused_quantization_is_the_two_kernel_path_bit_for_bit(m, n, k, act, scale):
    """Quantizing inside the GEMM gives the quantizer + GEMM output exactly (every ring tactic),
    and both are within tolerance of float64 on the CPU recipe's quantized activations. The
    static scale is half the dynamic one's range, so some blocks saturate."""
    from fp4core.formats.quantize import compute_global_scale, nvfp4_quantize
    be, problem, prepared, gw, (b, bsf), g = _fused_setup(m, n, k, act, 60 + m + n)
    x = (torch.randn(m, k, device="cuda", generator=g) * 3).to(act)
    gx = compute_global_scale(x) * (2.0 if scale == "static" else 1.0)
    gs = gx if scale == "static" else None
    a_ref, asf_ref = nvfp4_quantize(x, gx)
    alpha = (1.0 / (gx * gw)).float()
    ref = reference_mm(problem, fp4core.Operands(a_ref, asf_ref, b, bsf, alpha))
    tactics = _ring_tactics(be, problem)
    assert tactics
    for tactic in tactics:
        two, fused = _two_kernel_and_fused(be, problem, prepared, gw, x, tactic, gs)
        assert torch.equal(two.view(torch.int16), fused.view(torch.int16)), \
            f"{problem.describe()} {scale} {tactic.label()}: {(two != fused).sum().item()} outputs differ"
        err = relative_error(fused, ref)
        assert err <= TOLERANCE, f"{problem.describe()} {tactic.label()}: rel err {err:.3g}"


@pytest.mark.parametrize("act", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", ["zeros", "nan_inf", "tiny", "spread", "gs_overflow"])
def test_fused_quantization_special_inputs_match_the_two_kernel_path(case, act):
    """Zero input (gs = 1), NaN/Inf (their blocks only: NaN scale, zero codes), tiny values
    (E4M3 subnormal block scales), magnitudes spread over 8 decades (zero blocks beside
    saturated ones), and an amax so small that the global scale overflows (every block
    marked): the same bits as quantizer + GEMM, NaN patterns included."""
    m, n, k = 7, 1280, 1024
    be, problem, prepared, gw, _, g = _fused_setup(m, n, k, act, 70)
    x = torch.randn(m, k, device="cuda", generator=g)
    if case == "zeros":
        x = torch.zeros_like(x)
    elif case == "nan_inf":
        x[0, 5], x[3, 700], x[6, 1023] = float("nan"), float("inf"), -float("inf")
    elif case == "tiny":
        x = x * 1e-6
    elif case == "spread":
        x = x * torch.logspace(-4, 4, k, device="cuda")
    elif case == "gs_overflow":
        if act == torch.float16:
            pytest.skip("fp16 holds no value whose reciprocal overflows float32")
        x = x * 1e-38
    x = x.to(act)
    for tactic in _ring_tactics(be, problem)[:4]:
        two, fused = _two_kernel_and_fused(be, problem, prepared, gw, x, tactic)
        assert torch.equal(two.view(torch.int16), fused.view(torch.int16)), f"{case} {tactic.label()}"
    if case == "nan_inf":
        assert fused[[0, 3, 6]].isnan().all() and not fused[[1, 2, 4, 5]].isnan().any()


@pytest.mark.parametrize("m", [1, 16])
def test_pdl_fused_quantization_chain_is_bit_identical(m):
    """Four fused layers, each quantizing the previous one's output (N = K): with PDL each may
    start while the one before drains and must wait before reading its input's maximum."""
    from fp4_trtllm import launcher
    n = k = 2048
    be, problem, prepared, gw, _, g = _fused_setup(m, n, k, torch.bfloat16, 80 + m)
    ys = [torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)] + \
         [torch.empty(m, n, dtype=torch.bfloat16, device="cuda") for _ in range(4)]
    for tactic in _ring_tactics(be, problem)[:3]:
        launch = launcher.bind_fused_quant(w=prepared.b, w_sf=prepared.b_scale, m=m, n=n, k=k, t=tactic.t,
                                           warps=tactic.warps, splits=tactic.split_k or 1,
                                           act_dtype=torch.bfloat16, out_fp16=False, device=ys[0].device)
        calls = [lambda i=i: launch(ys[i], None, gw, None, ys[i + 1]) for i in range(4)]
        for c in calls:
            c()
        torch.cuda.synchronize()
        assert torch.isfinite(ys[4]).all()
        check_back_to_back(calls, ys[1:], label=f"m={m} {tactic.label()}")


@pytest.mark.parametrize("act", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("scale", ["dynamic", "static"])
def test_fp4linear_small_layer_quantizes_inside_the_gemm(monkeypatch, act, scale):
    """With the fused path allowed (FUSED_QUANT_MAX_ELEMS), a small NVFP4 Fp4Linear on trtllm
    runs one kernel per call, eagerly and in graph replay, with the two-step bytes."""
    from fp4core.pytorch import linear_plan
    monkeypatch.setattr(linear_plan, "FUSED_QUANT_MAX_ELEMS", 1 << 15)
    torch.manual_seed(5)
    lin = torch.nn.Linear(1024, 2880, bias=False, device="cuda", dtype=act)
    layer = fp4core.pytorch.nn.Fp4Linear.from_linear(lin, backend="trtllm")
    if scale == "static":
        layer.set_input_global_scale(fp4core.compute_global_scale(torch.randn(64, 1024, device="cuda")))
    for m in (1, 7, 16):
        x = torch.randn(m, 1024, device="cuda", dtype=act)
        y = layer(x)
        plan = layer._plans[(m, act)]
        assert plan.fused is not None and plan.fused_dtype is act, plan.tactic
        assert torch.equal(y, layer._op_gemm(x, act)), m
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            yg = layer(x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(yg, layer._op_gemm(x, act)), m
