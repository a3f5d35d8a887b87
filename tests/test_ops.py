"""The torch.library custom ops: registration, fake-tensor shapes, opcheck, torch.compile with
no graph breaks, dispatch to the tuned backend, prepared weights by key; GPU: compiled model,
CUDA-graph capture/replay, no tuning during capture, no allocation growth."""

import pytest
import torch

import fp4core
from fp4core.pytorch import ops
from fp4core.dispatch.selector import selector
from fp4core.formats.reference import relative_error
from fp4core.testing import device_allocations, registered
from fp4core.dispatch.torch_backend import TorchBackend
from fp4core.dispatch.tuning_cache import CacheEntry, problem_key

_TORCH_RUN = TorchBackend.run


def _operands(m, n, k, nv=True, device="cpu", seed=0, layout="128x4"):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(device)
    w = torch.randn(n, k, generator=g).to(device)
    if nv:
        gx, gw = fp4core.compute_global_scale(x), fp4core.compute_global_scale(w)
        a, asf = fp4core.nvfp4_quantize(x, gx, layout)
        b, bsf = fp4core.nvfp4_quantize(w, gw)
        alpha = (1.0 / (gx * gw)).reshape(1).float()
    else:
        (a, asf), (b, bsf), alpha = fp4core.mxfp4_quantize(x, layout), fp4core.mxfp4_quantize(w), None
    return x, w, a, asf, b, bsf, alpha


def _ref64(a, asf, b, bsf, alpha, nv=True, layout="128x4"):
    da = fp4core.dequantize(a, asf, use_nvfp4=nv, sfLayout=layout, dtype=torch.float64)
    db = fp4core.dequantize(b, bsf, use_nvfp4=nv, dtype=torch.float64)
    ref = da @ db.t()
    return ref * alpha.double() if alpha is not None else ref


def spy_backend(name="spy", priority=50, needs_prepare=False, log=None):
    """A backend that computes like torch and records its runs (and prepares)."""
    log = log if log is not None else []

    class Spy:
        @fp4core.hookimpl
        def backend_info(self):
            return fp4core.BackendInfo(name=name, version="1", needs_prepare=needs_prepare,
                                       priority={r: priority for r in ("decode", "small", "medium", "large")})

        @fp4core.hookimpl
        def supports(self, problem):
            return fp4core.Support.yes()

        @fp4core.hookimpl
        def prepare(self, problem, operands):
            log.append(("prepare", operands.b.data_ptr()))
            # a copy in the "backend's own layout" (here: the same bytes) to prove it is used
            return fp4core.Operands(None, None, operands.b.clone(), operands.b_scale.clone(),
                                    extra={"spy": True})

        @fp4core.hookimpl
        def run(self, problem, operands, tactic, out):
            log.append(("run", bool(operands.extra.get("spy"))))
            _TORCH_RUN(TorchBackend(), problem, operands, out)

    return Spy(), log


# -- registration and shapes --------------------------------------------------------------------
def test_ops_are_registered_with_their_schemas():
    mm = torch.ops.fp4core.mm_fp4.default
    q = torch.ops.fp4core.quantize_fp4.default
    assert "ScalarType out_dtype" in str(mm._schema) and "int weight_key" in str(mm._schema)
    assert "Tensor? global_scale" in str(q._schema)
    assert fp4core.quantize_fp4 is ops.quantize_fp4


@pytest.mark.parametrize("nv,layout", [(True, "128x4"), (True, "8x4"), (False, "128x4"), (False, "8x4")])
def test_fake_tensor_shape_propagation(nv, layout):
    from torch._subclasses.fake_tensor import FakeTensorMode
    fmt, block = ("nvfp4", 16) if nv else ("mxfp4", 32)
    m, n, k = 37, 200, 128
    with FakeTensorMode():
        x = torch.empty(m, k, dtype=torch.bfloat16)
        q, sf, gs = torch.ops.fp4core.quantize_fp4(x, fmt, layout, None, nv)
        tile = 128 if layout == "128x4" else 8
        assert q.shape == (m, k // 2) and q.dtype == torch.uint8
        assert sf.shape == ((m + tile - 1) // tile * tile, (k // block + 3) // 4 * 4) and sf.dtype == torch.uint8
        assert gs.shape == (1,) and gs.dtype == torch.float32
        b = torch.empty(n, k // 2, dtype=torch.uint8)
        bsf = torch.empty(256 * 4, dtype=torch.uint8)
        out = torch.ops.fp4core.mm_fp4(q, sf, b, bsf, gs if nv else None, torch.float16, nv, layout == "8x4",
                                       "auto", -1)
        assert out.shape == (m, n) and out.dtype == torch.float16


def test_fake_impl_rejects_k_mismatch_at_trace_time():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(), pytest.raises(Exception, match="K mismatch"):
        torch.ops.fp4core.mm_fp4(torch.empty(4, 32, dtype=torch.uint8), torch.empty(512, dtype=torch.uint8),
                                 torch.empty(8, 16, dtype=torch.uint8), torch.empty(512, dtype=torch.uint8),
                                 None, torch.bfloat16, True, False, "auto", -1)


@pytest.mark.parametrize("nv", [True, False])
def test_opcheck(nv):
    x, w, a, asf, b, bsf, alpha = _operands(7, 48, 64, nv)
    torch.library.opcheck(torch.ops.fp4core.mm_fp4.default,
                          (a, asf, b, bsf.reshape(-1), alpha, torch.bfloat16, nv, False, "auto", -1))
    torch.library.opcheck(torch.ops.fp4core.quantize_fp4.default,
                          (x, "nvfp4" if nv else "mxfp4", "8x4", None, nv))
    if nv:
        torch.library.opcheck(torch.ops.fp4core.quantize_fp4.default,
                              (x, "nvfp4", "128x4", torch.tensor([3.5]), False))


# -- eager semantics ----------------------------------------------------------------------------
@pytest.mark.parametrize("nv,layout", [(True, "128x4"), (True, "8x4"), (False, "128x4")])
def test_op_matches_mm_fp4_and_the_float64_reference(nv, layout):
    x, w, a, asf, b, bsf, alpha = _operands(9, 40, 96, nv, layout=layout)
    want = fp4core.mm_fp4(a, b.T, asf, bsf.T, alpha, torch.bfloat16, block_size=16 if nv else 32,
                          use_8x4_sf_layout=layout == "8x4", use_nvfp4=nv)
    got = ops.mm_fp4(a, b.T, asf, bsf.T, alpha, block_size=16 if nv else 32,
                     use_8x4_sf_layout=layout == "8x4", use_nvfp4=nv)
    assert torch.equal(got, want)
    assert relative_error(got, _ref64(a, asf, b, bsf, alpha, nv, layout)) <= 1e-2


def test_quantize_fp4_equals_the_reference_quantizers():
    x = torch.randn(3, 5, 64)
    q, sf, gs = fp4core.quantize_fp4(x)  # leading dims flattened
    gs_ref = fp4core.compute_global_scale(x.reshape(15, 64))
    q_ref, sf_ref = fp4core.nvfp4_quantize(x.reshape(15, 64), gs_ref)
    assert torch.equal(gs, gs_ref) and torch.equal(q, q_ref) and torch.equal(sf, sf_ref)
    q, sf, gs = fp4core.quantize_fp4(x.reshape(15, 64), "nvfp4", "8x4", global_scale=7.0)
    q_ref, sf_ref = fp4core.nvfp4_quantize(x.reshape(15, 64), 7.0, "8x4")
    assert gs.item() == 7.0 and torch.equal(q, q_ref) and torch.equal(sf, sf_ref)
    q, sf, gs = fp4core.quantize_fp4(x.reshape(15, 64), "mxfp4", global_scale=None)
    q_ref, sf_ref = fp4core.mxfp4_quantize(x.reshape(15, 64))
    assert gs.item() == 1.0 and torch.equal(q, q_ref) and torch.equal(sf, sf_ref)


def test_prepared_weight_goes_through_the_op_with_its_own_layout(monkeypatch):
    monkeypatch.setenv("FP4CORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    selector.registry.reset()
    spy, log = spy_backend(needs_prepare=True)
    with registered(spy):
        x, w, a, asf, b, bsf, alpha = _operands(5, 32, 64)
        pw = fp4core.prepare(b.T, bsf.T)
        assert "spy" in pw.by_backend
        out = ops.mm_fp4(a, pw, asf, None, alpha)
        assert ("run", True) in log  # the spy ran on its own prepared copy
        assert relative_error(out, _ref64(a, asf, b, bsf, alpha)) <= 1e-2
        key = ops.register_prepared(pw)
        assert key == ops.register_prepared(pw)
        # the canonical tensors with a key that names nothing: plain weight, still right
        out2 = torch.ops.fp4core.mm_fp4(a, asf, b, bsf.reshape(-1), alpha, torch.bfloat16, True, False,
                                        "torch", 10 ** 9)
        assert torch.equal(out2, fp4core.mm_fp4(a, b.T, asf, bsf.T, alpha, backend="torch"))
    selector.registry.reset()


def test_lazy_weight_entry_prepares_once_and_again_after_an_in_place_change(monkeypatch):
    monkeypatch.setenv("FP4CORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    selector.registry.reset()
    spy, log = spy_backend(needs_prepare=True)
    with registered(spy):
        x, w, a, asf, b, bsf, alpha = _operands(5, 32, 64)
        key, entry = ops.new_weight_key()
        b, bsf = b.clone(), bsf.reshape(-1).clone()
        call = lambda: torch.ops.fp4core.mm_fp4(a, asf, b, bsf, alpha, torch.bfloat16, True, False, "auto", key)
        out1 = call()
        call()
        assert [e for e in log if e[0] == "prepare"] == [("prepare", b.data_ptr())]
        _, w2, _, _, b2, bsf2, _ = _operands(5, 32, 64, seed=1)
        b.copy_(b2)  # bumps the version counter: the next call re-prepares
        out2 = call()
        assert len([e for e in log if e[0] == "prepare"]) == 2
        assert not torch.equal(out1, out2)
        assert relative_error(out2, _ref64(a, asf, b, bsf, alpha)) <= 1e-2
        del entry
    selector.registry.reset()


def test_errors_name_the_argument():
    x, w, a, asf, b, bsf, alpha = _operands(4, 32, 64)
    pw = fp4core.prepare(b.T, bsf.T)
    with pytest.raises(ValueError, match="b_descale: must be None"):
        ops.mm_fp4(a, pw, asf, bsf.T, alpha)
    with pytest.raises(ValueError, match="b_descale: required"):
        ops.mm_fp4(a, b.T, asf, None, alpha)
    with pytest.raises(ValueError, match="block_size"):
        ops.mm_fp4(a, b.T, asf, bsf.T, alpha, block_size=32)
    with pytest.raises(ValueError, match="K mismatch"):  # from the real implementation's checks
        ops.mm_fp4(a[:, :16].contiguous(), b.T, asf, bsf.T, alpha)
    with pytest.raises(ValueError, match="alpha"):
        ops.mm_fp4(a, b.T, asf, bsf.T, alpha.double())
    with pytest.raises(ValueError, match="multiple of the mxfp4 block size 32"):
        fp4core.quantize_fp4(torch.randn(4, 48), "mxfp4", global_scale=None)
    with pytest.raises(ValueError, match="MXFP4 has no global scale"):
        fp4core.quantize_fp4(torch.randn(4, 64), "mxfp4", global_scale=2.0)
    with pytest.raises(ValueError, match="NVFP4 needs one"):
        fp4core.quantize_fp4(torch.randn(4, 64), "nvfp4", global_scale=None)
    with pytest.raises(ValueError, match="expected 'auto'"):
        fp4core.quantize_fp4(torch.randn(4, 64), "nvfp4", global_scale="dynamic")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fp4core.quantize_fp4(torch.randn(64))
    with pytest.raises(ValueError, match="sf_layout"):
        fp4core.quantize_fp4(torch.randn(4, 64), sf_layout="4x4")


# -- torch.compile ------------------------------------------------------------------------------
def _w4a4(b, bsf, gw, nv=True, key=-1):
    def f(x):
        a, asf, gs = torch.ops.fp4core.quantize_fp4(x, "nvfp4" if nv else "mxfp4", "128x4", None, nv)
        alpha = 1.0 / (gs * gw) if nv else None
        return torch.ops.fp4core.mm_fp4(a, asf, b, bsf, alpha, torch.bfloat16, nv, False, "auto", key) * 2
    return f


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_on_cpu_matches_eager(backend):
    torch._dynamo.reset()
    x, w, _, _, _, _, _ = _operands(6, 48, 64)
    gw = fp4core.compute_global_scale(w)
    b, bsf = fp4core.nvfp4_quantize(w, gw)
    f = _w4a4(b, bsf.reshape(-1), gw)
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    assert torch.equal(compiled(x), f(x))
    x2 = torch.randn(11, 64)  # another M: recompiles (or runs dynamic) without a graph break
    assert torch.equal(compiled(x2), f(x2))


def test_compiled_graph_uses_the_tuned_backend(monkeypatch):
    """A cache entry naming a backend that the heuristic ranks last must win inside the graph."""
    monkeypatch.setenv("FP4CORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    selector.registry.reset()
    torch._dynamo.reset()
    spy, log = spy_backend(priority=-1000)  # below torch's -100: never the heuristic choice
    with registered(spy):
        x, w, _, _, _, _, _ = _operands(6, 48, 64)
        gw = fp4core.compute_global_scale(w)
        b, bsf = fp4core.nvfp4_quantize(w, gw)
        problem = fp4core.make_problem(6, 48, 64, device="cpu")
        assert fp4core.explain(problem).choice.backend.name == "torch"
        selector.cache.store(problem_key(problem), CacheEntry.from_json({
            "backend": "spy", "version": "1", "tactic": {}, "us": 1.0,
            "per_backend": {"spy": {"version": "1", "tactic": {}, "us": 1.0}}}))
        assert fp4core.explain(problem).choice.backend.name == "spy"
        compiled = torch.compile(_w4a4(b, bsf.reshape(-1), gw), fullgraph=True, backend="aot_eager")
        compiled(x)
        assert ("run", False) in log
    selector.registry.reset()


# -- GPU ---------------------------------------------------------------------------------------
def _side_stream_warmup(fn, times=2):
    """Warm up on a side stream, as torch.cuda.graph's documentation asks."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(times):
            out = fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    return out


@pytest.mark.gpu
def test_cuda_graph_replay_is_bit_identical_and_never_tunes_during_capture():
    shapes = [(16, 256, 512), (64, 512, 256), (5, 384, 128)]
    data = [_operands(m, n, k, device="cuda", seed=i) for i, (m, n, k) in enumerate(shapes)]
    problems = [fp4core.make_problem(m, n, k, device="cuda") for m, n, k in shapes]
    fp4core.tune(problems[:2], verbose=False, save=False)  # the third shape stays untuned

    def seq():
        return [ops.mm_fp4(a, b.T, asf, bsf.T, alpha) for _, _, a, asf, b, bsf, alpha in data]

    eager = [t.clone() for t in _side_stream_warmup(seq)]
    graph = torch.cuda.CUDAGraph()
    with fp4core.autotune(verbose=False, save=False):  # tuning is on, yet capture must not tune
        with torch.cuda.graph(graph):
            static = seq()
        assert fp4core.explain(problems[2]).cache_entry is None
        assert fp4core.explain(problems[2]).choice.source == "heuristic"
    assert fp4core.explain(problems[0]).choice.source == "cache"
    for t in static:
        t.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(static, eager):
        assert torch.equal(got, want)
    # the graph reads the inputs in place: new activations give the new eager result
    for i, (m, n, k) in enumerate(shapes):
        _, _, a2, asf2, _, _, _ = _operands(m, n, k, device="cuda", seed=100 + i)
        data[i][2].copy_(a2)
        data[i][3].copy_(asf2)
    graph.replay()
    for got, want in zip(static, seq()):
        assert torch.equal(got, want)


@pytest.mark.gpu
def test_no_device_allocation_growth_per_call():
    _, _, a, asf, b, bsf, alpha = _operands(16, 1024, 1024, device="cuda")
    pw = fp4core.prepare(b.T, bsf.T)
    call = lambda: ops.mm_fp4(a, pw, asf, None, alpha)
    _side_stream_warmup(call, 3)
    out_bytes = 16 * 1024 * 2
    with device_allocations() as first:
        call()
    with device_allocations() as repeated:
        for _ in range(20):
            call()
    # each eager call allocates its bf16 output and nothing else (workspaces are cached), and
    # the peak does not grow past what one call needs
    assert (repeated.allocations, repeated.requested_bytes) == (20, 20 * out_bytes)
    assert repeated.peak_growth <= max(first.peak_growth, out_bytes)
    # replaying a captured call allocates nothing at all
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    out.fill_(float("nan"))
    with device_allocations() as replays:
        for _ in range(10):
            graph.replay()
    assert (replays.allocations, replays.peak_growth) == (0, 0)
    assert relative_error(out, _ref64(a.cpu(), asf.cpu(), b.cpu(), bsf.cpu(), alpha.cpu())) <= 1e-2


@pytest.mark.gpu
def test_compile_fullgraph_on_gpu():
    torch._dynamo.reset()
    x, w, _, _, _, _, _ = _operands(32, 256, 512, device="cuda")
    gw = fp4core.compute_global_scale(w)
    b, bsf = fp4core.nvfp4_quantize(w, gw)
    f = _w4a4(b, bsf.reshape(-1), gw)
    compiled = torch.compile(f, fullgraph=True)
    got, want = compiled(x), f(x)
    # inductor computes alpha = 1/(gs*gw) in its own kernel (Triton's division may round
    # differently by an ulp), which can move a bf16 output by one ulp here and there
    assert relative_error(got, want) <= 2e-3


def test_cli_bench_quantize_runs_on_cpu(capsys):
    from fp4core.tools.cli import main
    assert main(["bench", "--quantize", "--m", "3", "--k", "64"]) == 0
    out = capsys.readouterr().out
    assert "nvfp4-auto" in out and "mxfp4" in out and "torch-ref" in out


def test_outputs_carry_no_autograd_graph():
    """Inference-only ops: a grad-requiring input gives plain outputs (no backward is built)."""
    x = torch.randn(5, 64, requires_grad=True)
    q, sf, gs = fp4core.quantize_fp4(x * 2)
    assert not (q.requires_grad or sf.requires_grad or gs.requires_grad)
    _, w, _, _, b, bsf, _ = _operands(5, 32, 64)
    alpha = (1.0 / (gs * fp4core.compute_global_scale(w))).requires_grad_()
    out = ops.mm_fp4(q, b.T, sf, bsf.T, alpha)
    assert not out.requires_grad and out.grad_fn is None
