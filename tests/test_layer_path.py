"""Issue 15 on the CPU: prepared weights reach every backend, the validated-call cache never
hides a bad argument, and Fp4Linear's eager plans (run here through Triton's interpreter)
give the op path's bytes and are rebuilt whenever the weight or the selector changes."""

import os
import subprocess
import sys

import pytest
import torch

import fp4core
from fp4core.dispatch.selector import selector
from fp4core.dispatch.problem import DeviceInfo
from fp4core.testing import first_in_auto, registered

SM90 = DeviceInfo("cuda", 0, "fake H200", (9, 0), 132)
SM100 = DeviceInfo("cuda", 0, "fake B200", (10, 0), 148)
SHAPES = [(1, 8192, 8192), (16, 28672, 8192), (128, 8192, 28672), (2048, 7168, 2048), (7, 2880, 1024),
          (1000, 1280, 2880), (3, 4096, 64)]


@pytest.mark.parametrize("device", [SM90, SM100], ids=["sm90", "sm100"])
def test_backends_without_prepare_answer_the_same_for_prepared_and_plain(device):
    """A backend that takes the canonical weight must not refuse a PreparedWeight: auto on a
    prepared weight then chooses among every backend."""
    checked = 0
    for be in selector.registry.backends():
        if be.has_hook("prepare"):
            continue
        for m, n, k in SHAPES:
            for nv in (True, False):
                if k % (16 if nv else 32):
                    continue
                kw = dict(use_nvfp4=nv, has_alpha=nv, device=device)
                plain = be.supports(fp4core.make_problem(m, n, k, **kw))
                prepared = be.supports(fp4core.make_problem(m, n, k, prepared=True, **kw))
                assert bool(plain) == bool(prepared), (be.name, m, n, k, nv, plain.reason, prepared.reason)
                checked += 1
    assert checked  # the torch backend at least


class CanonicalOnly:
    """A top-priority backend without a prepare hook that records what it is shown."""

    seen = []

    @fp4core.hookimpl
    def backend_info(self):
        return first_in_auto("canonical")

    @fp4core.hookimpl
    def supports(self, problem):
        if problem.prepared:  # what the cutlass plugin used to do
            return fp4core.Support.no("takes the canonical weight")
        return fp4core.Support.yes()

    @fp4core.hookimpl
    def run(self, problem, operands, tactic, out):
        self.seen.append((problem.prepared, operands.b.shape))
        selector.registry.get("torch").run(problem, operands, {}, out)


def _operands(m=5, n=40, k=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    a, asf, ga = fp4core.quantize_fp4(x)
    b, bsf, gb = fp4core.quantize_fp4(w)
    return a, b, asf, bsf, (1.0 / (ga * gb)).float()


def test_auto_on_a_prepared_weight_reaches_a_backend_without_prepare():
    a, b, asf, bsf, alpha = _operands()
    CanonicalOnly.seen.clear()
    with registered(CanonicalOnly()):
        pw = fp4core.prepare(b.T, bsf.T)
        assert fp4core.explain(a, pw, asf, None, alpha).choice.backend.name == "canonical"
        out = torch.full((5, 40), float("nan"), dtype=torch.bfloat16)
        fp4core.mm_fp4(a, pw, asf, None, alpha, out=out)
    assert CanonicalOnly.seen == [(False, (40, 32))]  # shown a plain problem and the canonical bytes
    assert torch.equal(out, fp4core.mm_fp4(a, b.T, asf, bsf.T, alpha, backend="torch"))


def test_the_validated_call_cache_never_hides_a_bad_argument():
    a, b, asf, bsf, alpha = _operands()
    fp4core.mm_fp4(a, b.T, asf, bsf.T, alpha)  # its metadata is now known good
    a2, _, asf2, _, _ = _operands(k=128)
    with pytest.raises(ValueError, match="b: K mismatch"):
        fp4core.mm_fp4(a2, b.T, asf2, bsf.T, alpha)  # known-good b, but K differs from a's
    with pytest.raises(ValueError, match="a_descale: expected .* scale bytes"):
        fp4core.mm_fp4(a, b.T, asf[:64], bsf.T, alpha)
    with pytest.raises(ValueError, match="a: expected a row-major contiguous"):
        fp4core.mm_fp4(a.T.contiguous().T, b.T, asf, bsf.T, alpha)
    with pytest.raises(ValueError, match="b: expected a column-major"):
        fp4core.mm_fp4(a, b.contiguous().T.contiguous(), asf, bsf.T, alpha)
    pw = fp4core.prepare(b.T, bsf.T)
    fp4core.mm_fp4(a, pw, asf, None, alpha)
    with pytest.raises(ValueError, match="a: K mismatch"):
        fp4core.mm_fp4(a2, pw, asf2, None, alpha)


_EAGER_SCRIPT = r"""
import torch, fp4core
from fp4core.pytorch.nn import Fp4Linear
from fp4core.dispatch.selector import selector
torch.manual_seed(0)
for fmt, act in (("nvfp4", "dynamic"), ("nvfp4", "static"), ("mxfp4", "dynamic")):
    lin = torch.nn.Linear(64, 48, bias=True, dtype=torch.bfloat16)
    layer = Fp4Linear.from_linear(lin, format=fmt)
    if act == "static":
        layer.set_input_global_scale(37.5)
    for m in (1, 7, 33):
        x = torch.randn(2, m, 64, dtype=torch.bfloat16)
        y = layer(x)
        assert layer._plans, "the eager path made no plan"
        y_op = layer._op_gemm(x.reshape(-1, 64), torch.bfloat16).add_(layer.bias).reshape(2, m, 48)
        assert torch.equal(y, y_op), (fmt, act, m, (y - y_op).abs().max())
        plan = layer._plans[(2 * m, torch.bfloat16)]
        layer(x)
        assert layer._plans[(2 * m, torch.bfloat16)] is plan, "plan not reused"
    # the weight changes in place: a new plan, and the new weight's result
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    plan = layer._plans.get((5, torch.bfloat16)) or (layer(x), layer._plans[(5, torch.bfloat16)])[1]
    with torch.no_grad():
        layer.weight_fp4.copy_(torch.roll(layer.weight_fp4, 1, 0))
    y = layer(x)
    assert layer._plans[(5, torch.bfloat16)] is not plan, "stale plan after an in-place weight change"
    assert torch.equal(y, layer._op_gemm(x, torch.bfloat16).add_(layer.bias))
    # a loaded state_dict and a new backend each invalidate the plans
    plan = layer._plans[(5, torch.bfloat16)]
    layer.load_state_dict(layer.state_dict())
    layer(x)
    assert layer._plans[(5, torch.bfloat16)] is not plan
    plan = layer._plans[(5, torch.bfloat16)]
    gen = selector.generation
    with fp4core.autotune(verbose=False):
        pass
    assert selector.generation != gen
    layer(x)
    assert layer._plans[(5, torch.bfloat16)] is not plan
    # a different backend asked for: a new plan, same bytes (torch is the reference backend)
    plan = layer._plans[(5, torch.bfloat16)]
    want = layer(x)
    layer.backend = "torch"
    got = layer(x)
    assert layer._plans[(5, torch.bfloat16)] is not plan and layer._plans[(5, torch.bfloat16)].backend.name == "torch"
    assert torch.equal(got, want), (got - want).abs().max()
    layer.backend = "auto"
    # the whole-layer op (what torch.compile traces) runs the same plans
    layer._plans.clear()
    x = torch.randn(11, 64, dtype=torch.bfloat16)
    y_op = torch.ops.fp4core.linear_fp4(x, layer.weight_fp4, layer.weight_scale, layer.weight_global_scale,
                                        layer.input_global_scale, layer._static_alpha, layer.format,
                                        layer.act_sf_layout, layer.act_scale == "static", torch.bfloat16,
                                        layer.backend, layer._layer_key)
    assert (11, torch.bfloat16) in layer._plans, "linear_fp4 did not take the layer's plans"
    assert torch.equal(y_op, layer._op_gemm(x, torch.bfloat16)), (fmt, act)
    # an unknown layer key composes the two ops instead
    y_unplanned = torch.ops.fp4core.linear_fp4(x, layer.weight_fp4, layer.weight_scale, layer.weight_global_scale,
                                               layer.input_global_scale, layer._static_alpha, layer.format,
                                               layer.act_sf_layout, layer.act_scale == "static", torch.bfloat16,
                                               layer.backend, -1)
    assert torch.equal(y_unplanned, y_op)
print("eager plans: ok")
"""


@pytest.mark.skipif(not __import__("importlib").util.find_spec("triton") or torch.cuda.is_available(),
                    reason="needs triton (the interpreter); with a GPU the GPU tests cover the path")
def test_fp4linear_eager_plans_in_the_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", FP4CORE_DISABLE_PLUGIN_AUTOLOAD="1")
    res = subprocess.run([sys.executable, "-c", _EAGER_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "eager plans: ok" in res.stdout


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,act", [("nvfp4", "dynamic"), ("nvfp4", "static"), ("mxfp4", "dynamic")])
def test_fp4linear_eager_path_equals_the_op_path_and_graph_replay(fmt, act):
    torch.manual_seed(1)
    lin = torch.nn.Linear(2048, 1280, bias=False, device="cuda", dtype=torch.bfloat16)
    layer = fp4core.pytorch.nn.Fp4Linear.from_linear(lin, format=fmt)
    if act == "static":
        layer.set_input_global_scale(fp4core.compute_global_scale(torch.randn(64, 2048, device="cuda")))
    for m in (1, 16, 300):
        x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
        y = layer(x)
        assert torch.equal(y, layer._op_gemm(x, torch.bfloat16))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            yg = layer(x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        assert torch.equal(yg, layer(x))


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,act", [("nvfp4", "dynamic"), ("nvfp4", "static"), ("mxfp4", "dynamic")])
def test_compiled_fp4linear_runs_the_eager_plans_bit_exactly(fmt, act):
    torch._dynamo.reset()
    torch.manual_seed(2)
    lin = torch.nn.Linear(1024, 640, bias=True, device="cuda", dtype=torch.bfloat16)
    layer = fp4core.pytorch.nn.Fp4Linear.from_linear(lin, format=fmt)
    if act == "static":
        layer.set_input_global_scale(fp4core.compute_global_scale(torch.randn(64, 1024, device="cuda")))
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    for m in (1, 16, 300):
        x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
        layer._plans.clear()
        y = compiled(x)
        assert (m, torch.bfloat16) in layer._plans, "the compiled layer did not run a plan"
        want = layer._op_gemm(x, torch.bfloat16) + layer.bias
        assert torch.equal(y, want), (m, (y - want).abs().max())


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k", [(1, 8192, 8192), (16, 2880, 1024), (128, 1280, 2880)])
def test_every_backends_bound_launcher_equals_its_run(m, n, k):
    """``Backend.bind`` (the plugin's bind hook, or the closure over run) writes what ``run``
    writes, for the first tactics of every backend that takes the shape."""
    from fp4core.dispatch.problem import Operands
    from fp4core.dispatch.tuner import make_sets, prepared_sets
    problem = fp4core.make_problem(m, n, k, device="cuda", prepared=True)
    ops = make_sets(problem, n_sets=1)[0]
    for be in selector.registry.backends():
        if be.name == "torch" or not be.supports(problem):
            continue
        bops = prepared_sets(be, problem, [ops])[0] if be.has_hook("prepare") else ops
        for tactic in be.tactics(problem)[:4]:
            want = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
            be.run(problem, bops, tactic, want)
            got = torch.full_like(want, float("nan"))
            be.bind(problem, Operands(None, None, bops.b, bops.b_scale, None, bops.extra), tactic)(
                bops.a, bops.a_scale, bops.alpha, got)
            assert torch.equal(got, want), (be.name, tactic)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,act", [("nvfp4", "dynamic"), ("nvfp4", "bf16"), ("mxfp4", "bf16")])
@pytest.mark.parametrize("m", [1, 16, 130])
def test_fp4linear_chain_with_pdl_in_a_graph_equals_eager_without(m, fmt, act):
    """Three Fp4Linear layers back to back, each fed the previous one's output (through a copy
    into a fixed buffer, as a model's residual stream would): the activation quantizer's
    kernels and the GEMMs are launched with programmatic dependent launch and may start while
    the kernel ahead drains, so each must wait before it reads its input or writes; the graph
    replay with PDL must give the bits of eager calls without it."""
    from fp4core.testing import check_back_to_back
    torch.manual_seed(3 + m)
    k = 1024
    layers = []
    for _ in range(3):
        lin = torch.nn.Linear(k, k, bias=False, device="cuda", dtype=torch.bfloat16)
        activations = "bf16" if act == "bf16" else "fp4"
        layers.append(fp4core.pytorch.nn.Fp4Linear.from_linear(lin, format=fmt, activations=activations))
    ys = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16)] + \
         [torch.empty(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    calls = [lambda i=i: ys[i + 1].copy_(layers[i](ys[i])) for i in range(3)]
    with torch.no_grad():
        for c in calls:  # plans, quantizer bindings, workspaces
            c()
        torch.cuda.synchronize()
        assert torch.isfinite(ys[3]).all()
        check_back_to_back(calls, ys[1:], label=f"{fmt} {act} m={m}")


_FUSED_SCRIPT = r"""
import torch, fp4core
from fp4core.dispatch.selector import selector
from fp4core.formats.kernels.quantize_triton import quantize_activation
from fp4core.formats.reference import reference_mm
from fp4core.pytorch import linear_plan
from fp4core.pytorch.nn import Fp4Linear
from fp4core.testing import first_in_auto, registered

assert linear_plan.FUSED_QUANT_MAX_ELEMS == 4096, linear_plan.FUSED_QUANT_MAX_ELEMS
calls, fail = [], []


class Fuser:
    # A top-priority backend whose fused launch is the two steps, recorded: it tests when the
    # plan takes bind_quantizing's launcher, not a kernel.
    @fp4core.hookimpl
    def backend_info(self):
        return first_in_auto("fuser")

    @fp4core.hookimpl
    def supports(self, problem):
        return fp4core.Support.yes()

    @fp4core.hookimpl
    def run(self, problem, operands, tactic, out):
        out.copy_(reference_mm(problem, operands, torch.float32).to(out.dtype))

    @fp4core.hookimpl
    def bind_quantizing(self, problem, operands, tactic, act_dtype):
        if act_dtype is not torch.bfloat16:
            return None
        if "bind" in fail:
            raise RuntimeError("cannot bind")

        def launch(x, gs, w_gs, alpha, out):
            calls.append((x.shape[0], "static" if gs is not None else "dynamic"))
            assert (gs is None) == (alpha is None) == (w_gs is not None), (gs, w_gs, alpha)
            if fail:
                raise RuntimeError("fused launch failed")
            a, a_sf, computed = quantize_activation(x, problem.fmt, problem.a_sf_layout, gs, w_gs)
            alpha = computed if gs is None else alpha
            self.run(problem, fp4core.Operands(a, a_sf.view(-1), operands.b, operands.b_scale, alpha), tactic, out)
        return launch


torch.manual_seed(0)
with registered(Fuser()):
    lin = torch.nn.Linear(256, 48, bias=False, dtype=torch.bfloat16)
    layer = Fp4Linear.from_linear(lin)
    x = torch.randn(7, 256, dtype=torch.bfloat16)
    y = layer(x)
    assert calls == [(7, "dynamic")], calls
    assert layer._plans[(7, torch.bfloat16)].backend.name == "fuser"
    assert torch.equal(y, layer._op_gemm(x, torch.bfloat16))
    layer(x)
    assert len(calls) == 2, "the plan's fused launcher is not reused"
    # above the limit (32 x 256 > 4096), float32 input (the hook declines), a misaligned view,
    # MXFP4: the two steps
    for xx in (torch.randn(32, 256, dtype=torch.bfloat16), torch.randn(6, 256),
               torch.randn(6 * 256 + 1, dtype=torch.bfloat16)[1:].view(6, 256)):
        y = layer(xx)
        assert torch.equal(y, layer._op_gemm(xx, y.dtype if xx.dtype != torch.float32 else torch.bfloat16).to(y.dtype))
    assert len(calls) == 2, calls
    mx = Fp4Linear.from_linear(lin, format="mxfp4")
    mx(x)
    assert len(calls) == 2, "MXFP4 has no fused path"
    # the static input scale: fused too, with the layer's scale and alpha
    layer.set_input_global_scale(20.0)
    y = layer(x)
    assert calls[-1] == (7, "static"), calls
    assert torch.equal(y, layer._op_gemm(x, torch.bfloat16))
    # a hook that raises while binding: a warning, and the two steps
    layer = Fp4Linear.from_linear(lin)
    fail.append("bind")
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    n_calls = len(calls)
    y = layer(x)
    assert len(calls) == n_calls and layer._plans[(3, torch.bfloat16)].fused is None
    assert torch.equal(y, layer._op_gemm(x, torch.bfloat16))
    fail.clear()
    # a failing fused launch: auto leaves the backend out and redoes the call in two steps
    layer = Fp4Linear.from_linear(lin)
    fail.append("launch")
    x = torch.randn(5, 256, dtype=torch.bfloat16)
    y = layer(x)
    assert calls[-1] == (5, "dynamic")
    assert torch.equal(y, layer._op_gemm(x, torch.bfloat16)), "the fallback changed the result"
    assert any(name == "fuser" and "fused launch failed" in why for (_, name), why in selector.failures().items())
print("fused plans: ok")
"""


@pytest.mark.skipif(not __import__("importlib").util.find_spec("triton") or torch.cuda.is_available(),
                    reason="needs triton (the interpreter); with a GPU the GPU tests cover the path")
def test_small_dynamic_layers_take_the_backends_quantizing_launcher():
    """FP4CORE_FUSED_QUANT_MAX set: an NVFP4 layer whose input has at most that many elements
    runs the chosen backend's ``bind_quantizing`` launcher (once bound, reused; dynamic and
    static scales, each with its arguments), with the bytes of the two-step op path; larger
    inputs, float32 inputs the hook declines, misaligned inputs and MXFP4 take the two steps;
    a failing fused launch falls back without changing the result."""
    env = dict(os.environ, TRITON_INTERPRET="1", FP4CORE_DISABLE_PLUGIN_AUTOLOAD="1", FP4CORE_FUSED_QUANT_MAX="4096")
    res = subprocess.run([sys.executable, "-c", _FUSED_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "fused plans: ok" in res.stdout


def test_fused_quant_limit_from_the_environment():
    """FP4CORE_FUSED_QUANT_MAX: unset is 0 (off), a number is taken, anything else is refused
    with the variable's name."""
    from fp4core.pytorch import linear_plan
    code = "from fp4core.pytorch import linear_plan as p; print(p.FUSED_QUANT_MAX_ELEMS)"
    for value, want in (("", "0"), ("16384", "16384")):
        env = dict(os.environ, FP4CORE_FUSED_QUANT_MAX=value)
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert res.stdout.strip() == want, res.stderr[-2000:]
    env = dict(os.environ, FP4CORE_FUSED_QUANT_MAX="lots")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "FP4CORE_FUSED_QUANT_MAX='lots'" in res.stderr
    assert linear_plan.FUSED_QUANT_MAX_ELEMS >= 0
