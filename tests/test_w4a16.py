"""Weight-only FP4 (W4A16): mm_bf16_fp4, prepare_bf16_fp4_weights, the op and Fp4Linear's
weight-only mode, against an independent float64 reference (tests/independent.py)."""

import pytest
import torch

import fp4core
from fp4core.pytorch import ops
from fp4core.testing import quantize_weight
from independent import dequant_matrix, e4m3_value, e8m0_value, unswizzle

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def weight_only_case(m, n, k, use_nvfp4, act_dtype, device, seed):
    """Fresh random x (m, k) in act_dtype and a quantized (n, k) weight; returns
    (a, b, b_sf, alpha, float64 reference of (a @ dequant(b).T) * alpha)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, k, generator=g) * 3).to(act_dtype)
    w = torch.randn(n, k, generator=g)
    b, bsf, alpha = quantize_weight(w, use_nvfp4)
    block = 16 if use_nvfp4 else 32
    sb = unswizzle(bsf.reshape(-1).tolist(), n, k // block, "128x4")
    db = torch.tensor(dequant_matrix(b.tolist(), sb, block, e4m3_value if use_nvfp4 else e8m0_value),
                      dtype=torch.float64)
    ref = x.double() @ db.T * (alpha.item() if alpha is not None else 1.0)
    to = (lambda t: t.to(device) if t is not None else None)
    return to(x), to(b), to(bsf), to(alpha), ref


def rel_err(out, ref):
    return ((out.double().cpu() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_nvfp4", [True, False])
@pytest.mark.parametrize("act_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n,k", [(1, 1280, 128), (7, 96, 2880), (33, 2880, 256)])
def test_mm_bf16_fp4_matches_the_float64_reference(device, use_nvfp4, act_dtype, m, n, k):
    if not use_nvfp4 and k % 32:
        pytest.skip("MXFP4 needs K % 32 == 0")
    a, b, bsf, alpha, ref = weight_only_case(m, n, k, use_nvfp4, act_dtype, device, seed=m * 7 + n)
    block = 16 if use_nvfp4 else 32
    out = torch.full((m, n), float("nan"), dtype=act_dtype, device=device)
    fp4core.mm_bf16_fp4(a, b, bsf, alpha, out=out, block_size=block)
    assert out.dtype == act_dtype and bool(torch.isfinite(out).all())
    assert rel_err(out, ref) <= 1e-2
    pw, none, alpha2 = fp4core.prepare_bf16_fp4_weights(b, bsf, alpha, block_size=block)
    assert none is None and alpha2 is alpha
    out2 = fp4core.mm_bf16_fp4(a, pw, none, alpha2, block_size=block)
    assert rel_err(out2, ref) <= 1e-2
    assert torch.equal(ops.mm_bf16_fp4(a, b, bsf, alpha, block_size=block), out)


def test_out_dtype_defaults_to_the_activations_and_can_be_chosen():
    a, b, bsf, alpha, ref = weight_only_case(3, 64, 128, True, torch.float16, "cpu", seed=3)
    assert fp4core.mm_bf16_fp4(a, b, bsf, alpha).dtype == torch.float16
    out = fp4core.mm_bf16_fp4(a, b, bsf, alpha, out_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) <= 1e-2


def test_bad_arguments_name_the_argument():
    a, b, bsf, alpha, _ = weight_only_case(3, 64, 128, True, torch.bfloat16, "cpu", seed=4)
    cases = [
        (dict(a=a.float()), "a: expected torch.bfloat16 or torch.float16"),
        (dict(a=a[:, :64].contiguous()), "K mismatch"),
        (dict(b=b.T), "b: expected a row-major contiguous"),
        (dict(b_descale=bsf[:64]), "b_descale"),
        (dict(alpha=torch.ones(2)), "alpha"),
        (dict(block_size=8), "block_size"),
        (dict(out=torch.empty(3, 65, dtype=torch.bfloat16)), "out"),
    ]
    for change, message in cases:
        args = dict(a=a, b=b, b_descale=bsf, alpha=alpha)
        args.update(change)
        kw = {k: args.pop(k) for k in ("block_size", "out") if k in args}
        with pytest.raises((ValueError, TypeError), match=message):
            fp4core.mm_bf16_fp4(args["a"], args["b"], args["b_descale"], args["alpha"], **kw)
    w4a4 = fp4core.prepare(b.T, bsf)
    with pytest.raises(ValueError, match="prepared for mm_fp4"):
        fp4core.mm_bf16_fp4(a, w4a4, None, alpha)


def test_backends_without_bf16_activations_are_not_asked():
    """Only backends whose BackendInfo.activations lists bf16 see a weight-only problem."""
    asked = []

    class Fp4Only:
        @fp4core.hookimpl
        def backend_info(self):
            return fp4core.BackendInfo(name="fp4only", version="1", priority={"decode": 99})

        @fp4core.hookimpl
        def supports(self, problem):
            asked.append(problem.activation)
            return fp4core.Support.yes()

        @fp4core.hookimpl
        def run(self, problem, operands, tactic, out):
            raise AssertionError("never run on bf16 activations")

    from fp4core.testing import registered
    a, b, bsf, alpha, ref = weight_only_case(2, 32, 64, True, torch.bfloat16, "cpu", seed=5)
    with registered(Fp4Only):
        out = fp4core.mm_bf16_fp4(a, b, bsf, alpha)
        exp = fp4core.explain(fp4core.make_problem(2, 32, 64, device="cpu"))
    assert rel_err(out, ref) <= 1e-2  # the torch backend ran it
    assert "bf16" not in asked and exp.candidates[0] == "fp4only"  # asked about FP4 problems only


@pytest.mark.parametrize("device", DEVICES)
def test_weight_only_fp4linear_matches_the_float64_layer(device):
    torch.manual_seed(11)
    lin = torch.nn.Linear(256, 96).to(device=device, dtype=torch.bfloat16)
    layer = fp4core.nn.Fp4Linear.from_linear(lin, activations="bf16")
    x = torch.randn(5, 256, device=device, dtype=torch.bfloat16)
    ref = x.double().cpu() @ layer.dequantized_weight(torch.float64).cpu().T + lin.bias.double().cpu()
    y = layer(x)
    assert y.dtype == torch.bfloat16 and rel_err(y, ref) <= 1e-2
    w4a4 = fp4core.nn.Fp4Linear.from_linear(lin)  # the same weight, activations quantized too
    assert rel_err(y, ref) < rel_err(w4a4(x), ref)
    model = fp4core.nn.quantize_linears(torch.nn.Sequential(lin), activations="bf16")
    assert model[0].activations == "bf16" and torch.equal(model[0](x), y)
    with pytest.raises(ValueError, match="activations"):
        fp4core.nn.Fp4Linear(256, 96, activations="int8")


@pytest.mark.gpu
def test_weight_only_layer_in_cuda_graph_replay_reads_new_inputs():
    torch.manual_seed(12)
    lin = torch.nn.Linear(512, 128).cuda().bfloat16()
    layer = fp4core.nn.Fp4Linear.from_linear(lin, activations="bf16")
    x = torch.randn(4, 512, device="cuda", dtype=torch.bfloat16)
    layer(x)  # prepare outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = layer(x)
    x.copy_(torch.randn(4, 512) * 2)
    y.fill_(float("nan"))
    graph.replay()
    ref = x.double().cpu() @ layer.dequantized_weight(torch.float64).cpu().T + lin.bias.double().cpu()
    assert rel_err(y, ref) <= 1e-2


def test_layer_bench_w4a16_rows_beside_bf16(capsys):
    """`fp4core bench --layer --w4a16`: weight-only rows (and tinygemm's, refused off CUDA) beside
    the bf16 layer of the same run, with their error against it."""
    from fp4core.tools.cli import main
    rc = main(["bench", "--layer", "--w4a16", "--m", "2", "--n", "64", "--k", "1024"])
    assert rc == (0 if torch.cuda.is_available() else 1)  # a row that could not run fails the command
    out = capsys.readouterr().out
    rows = {line.split()[3]: line for line in out.splitlines() if line.strip().startswith("2 ")}
    assert set(rows) == {"bf16", "w4a16-nvfp4", "w4a16-mxfp4", "tinygemm-int4"}
    for label in ("w4a16-nvfp4", "w4a16-mxfp4"):
        fields = rows[label].split()  # M N K variant eager x graph x host err backend
        err = float(fields[9])
        assert 0 < err < 0.2, rows[label]  # FP4 weight error against the bf16 layer, no more
        assert fields[10] in ("torch", "trtllm", "cutlass", "cudnn", "triton"), rows[label]  # who ran it
    if not torch.cuda.is_available():
        assert "CUDA kernel" in rows["tinygemm-int4"]


@pytest.mark.parametrize("device", DEVICES)
def test_weight_only_layer_eager_plan_matches_the_op_and_follows_weight_changes(device):
    """Eager weight-only layers run a per-M plan (no torch.library dispatch): bit-equal to the
    custom op's answer, one plan per (M, dtype), rebuilt when the weight changes in place."""
    torch.manual_seed(13)
    lin = torch.nn.Linear(256, 64, bias=False).to(device=device, dtype=torch.bfloat16)
    layer = fp4core.nn.Fp4Linear.from_linear(lin, activations="bf16")
    x = torch.randn(3, 256, device=device, dtype=torch.bfloat16)
    y = layer(x)
    assert list(layer._layer.plans) == [(3, torch.bfloat16, "w16")]
    via_op = torch.ops.fp4core.mm_bf16_fp4(x, layer.weight_fp4, layer.weight_scale, layer._weight_alpha,
                                           torch.bfloat16, True, "auto", layer._bf16_key)
    assert torch.equal(y, via_op)
    layer(torch.randn(3, 256, device=device, dtype=torch.bfloat16))
    layer(torch.randn(7, 256, device=device, dtype=torch.bfloat16))
    assert sorted(k[0] for k in layer._layer.plans) == [3, 7]
    # a new weight written into the same buffers: the plan must not serve the old one
    new_lin = torch.nn.Linear(256, 64, bias=False).to(device=device, dtype=torch.bfloat16)
    other = fp4core.nn.Fp4Linear.from_linear(new_lin, activations="bf16")
    layer.weight_fp4.copy_(other.weight_fp4)
    layer.weight_scale.copy_(other.weight_scale)
    layer.weight_global_scale.copy_(other.weight_global_scale)
    layer._weight_alpha.copy_(other._weight_alpha)
    ref = x.double().cpu() @ other.dequantized_weight(torch.float64).cpu().T
    assert rel_err(layer(x), ref) <= 1e-2


def test_weight_only_priority_keys_override_the_regime_for_weight_only_problems():
    """BackendInfo.priority: "w4a16:<regime>" ranks weight-only problems only; then
    "sm<NN>:<regime>", then "<regime>"; a missing regime counts 0."""
    info = fp4core.BackendInfo(name="p", version="1",
                               priority={"decode": 10, "sm90:decode": 20, "w4a16:decode": 30, "small": 5})
    import dataclasses
    from fp4core.dispatch.problem import DeviceInfo
    h100 = DeviceInfo("cuda", 0, "NVIDIA H100 80GB HBM3", (9, 0))
    w4a4 = fp4core.make_problem(1, 64, 64, device="cpu")
    w16 = fp4core.make_problem(1, 64, 64, device="cpu", act_dtype=torch.bfloat16)
    assert info.priority_for(w4a4) == 10 and info.priority_for(w16) == 30
    assert info.priority_for(fp4core.make_problem(64, 64, 64, device="cpu", act_dtype=torch.bfloat16)) == 5
    assert info.priority_for(fp4core.make_problem(4096, 64, 64, device="cpu")) == 0
    assert info.priority_for(dataclasses.replace(w4a4, device=h100)) == 20
    assert info.priority_for(dataclasses.replace(w16, device=h100)) == 30
