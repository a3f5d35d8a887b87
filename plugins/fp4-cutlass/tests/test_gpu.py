"""GPU checks (marked ``gpu``): every tactic (each compiled tile variant, split-K on and off)
against the exact float64 reference, both formats, odd shapes (M = 1, 7, 129, 1000; N not a
multiple of the tile; K a multiple of 64 but not of the 128-wide stage), both A-scale layouts,
fp16 output, mm_fp4 with FlashInfer-style arguments, and CUDA-graph capture."""

import pytest
import torch

import fp4core
from fp4core.formats.reference import TOLERANCE, reference_mm, relative_error
from fp4core.dispatch.synthetic import random_operands
from fp4core.testing import check_back_to_back, check_backend, quantize_weight, run_repeatedly

from fp4_cutlass import launcher
from fp4_cutlass.plugin import CutlassBackend, CutlassTactic

pytestmark = pytest.mark.gpu

ALL_TACTICS = [CutlassTactic(tm=tm, bn=bn, split_k=s, cluster=cl, deep=d)
               for tm in launcher.TM_CHOICES for bn in launcher.BN_CHOICES for s in (1, 3)
               for cl in launcher.CLUSTER_CHOICES for d in (0, 1) if not (d and tm > launcher.DEEP_MAX_TM)
               and (tm, bn) not in launcher.UNBUILT_TILES]


def _problem(m, n, k, nv=True, e8=False, out=torch.bfloat16):
    return fp4core.make_problem(m, n, k, use_nvfp4=nv, use_8x4_sf_layout=e8, out_dtype=out, device="cuda")


@pytest.mark.parametrize("nv", [True, False], ids=["nvfp4", "mxfp4"])
@pytest.mark.parametrize("m", [1, 7, 129, 1000])
@pytest.mark.parametrize("n,k", [(320, 1088), (1024, 2048)])
def test_every_tactic_exact(m, n, k, nv):
    problem = _problem(m, n, k, nv)
    results = check_backend("cutlass", problem, seed=m + n + k + nv, tactics=ALL_TACTICS)
    # Exact dequantization + fp32 accumulation: only the final bf16 rounding remains.
    assert max(r.error for r in results) < 5e-3


@pytest.mark.parametrize("nv", [True, False], ids=["nvfp4", "mxfp4"])
def test_heuristic_tactics_a8x4_fp16(nv):
    for m, out in ((33, torch.float16), (300, torch.bfloat16)):
        problem = _problem(m, 576, 1344, nv, e8=True, out=out)
        check_backend("cutlass", problem, seed=m, tactics=CutlassBackend().tactics(problem))


def test_mm_fp4_flashinfer_arguments():
    m, n, k = 200, 512, 1024
    problem = _problem(m, n, k)
    gen = torch.Generator(device="cuda").manual_seed(5)
    ops = random_operands(problem, device="cuda", generator=gen)
    ref = reference_mm(problem, ops)
    b_sf = ops.b_scale.view(n, k // 16)  # 128x4 bytes as FlashInfer's (n, k/16) tensor
    out = fp4core.mm_fp4(ops.a, ops.b.T, ops.a_scale.view(m + (-m) % 128, k // 16), b_sf.T,
                         ops.alpha, backend="cutlass")
    assert relative_error(out, ref) <= TOLERANCE


def test_repeatable_and_poison_free():
    """Same inputs twice -> bitwise the same output (no races), and every element written."""
    problem = _problem(129, 640, 2048)
    ops = random_operands(problem, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    be = CutlassBackend()
    for tac in (CutlassTactic(tm=128, bn=64, split_k=1, cluster=2, deep=1),
                CutlassTactic(tm=256, bn=128, split_k=4, cluster=1)):
        outs = run_repeatedly(be, problem, ops, tac, times=2)
        assert not outs[0].isnan().any()
        assert torch.equal(outs[0], outs[1]), tac


def test_cuda_graph_capture():
    m, n, k = 64, 768, 1536
    problem = _problem(m, n, k)
    be = CutlassBackend()
    tac = CutlassTactic(tm=64, bn=64, split_k=2, cluster=2, deep=1)
    ops = random_operands(problem, device="cuda", generator=torch.Generator(device="cuda").manual_seed(2))
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    be.run(problem, ops, tac, out)  # warm-up: builds/loads the library, sizes the workspace
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        be.run(problem, ops, tac, out)
    fresh = random_operands(problem, device="cuda", generator=torch.Generator(device="cuda").manual_seed(3))
    for dst, src in ((ops.a, fresh.a), (ops.a_scale, fresh.a_scale), (ops.b, fresh.b), (ops.b_scale, fresh.b_scale)):
        dst.copy_(src)
    out.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    assert relative_error(out, reference_mm(problem, fresh)) <= TOLERANCE


@pytest.mark.parametrize("nv", [True, False], ids=["nvfp4", "mxfp4"])
@pytest.mark.parametrize("m", [1, 7, 33, 1000])
@pytest.mark.parametrize("n,k", [(1280, 2880), (2880, 1024), (7168, 2048)])
def test_weight_only_every_tactic_exact(m, n, k, nv):
    """W4A16: bf16 activations through the permute-only pre-pass, every
    tactic the backend offers plus a split-K one, against the float64 reference of
    a x dequant(b), output poisoned first. The issue's odd shapes; K = 2880 ends in a half chunk."""
    problem = fp4core.make_problem(m, n, k, use_nvfp4=nv, device="cuda", act_dtype=torch.bfloat16)
    ops = random_operands(problem, device="cuda", generator=torch.Generator(device="cuda").manual_seed(m + n))
    ref = reference_mm(problem, ops)
    be = CutlassBackend()
    tactics = be.tactics(problem) + [CutlassTactic(tm=64, bn=128, split_k=3, cluster=1)]
    for tac in tactics:
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
        be.run(problem, ops, tac, out)
        assert relative_error(out, ref) <= 5e-3, tac


@pytest.mark.parametrize("weight_only", [False, True], ids=["w4a4", "w4a16"])
@pytest.mark.parametrize("m,tac", [(3, CutlassTactic(tm=16, bn=128, split_k=3, cluster=1)),
                                   (40, CutlassTactic(tm=64, bn=64, split_k=1, cluster=2)),
                                   (130, CutlassTactic(tm=128, bn=128, split_k=1, cluster=1, deep=1))])
def test_bound_launcher_matches_run_on_fresh_inputs(m, tac, weight_only):
    """``bind`` (what Fp4Linear's plans call) gives run's bits for new activations, alpha and
    outputs each call, against the float64 reference, output poisoned first; a
    non-contiguous weight-only activation is refused."""
    problem = fp4core.make_problem(m, 704, 1088, device="cuda",
                                   act_dtype=torch.bfloat16 if weight_only else None)
    be = CutlassBackend()
    first = random_operands(problem, device="cuda", generator=torch.Generator(device="cuda").manual_seed(m))
    launch = be.bind(problem, first, tac)
    for seed in (1, 2):
        ops = random_operands(problem, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed))
        ops.b.copy_(first.b)
        ops.b_scale.copy_(first.b_scale)
        got = torch.full((m, 704), float("nan"), dtype=torch.bfloat16, device="cuda")
        want = torch.full_like(got, float("nan"))
        launch(ops.a, ops.a_scale, ops.alpha, got)
        be.run(problem, ops, tac, want)
        torch.cuda.synchronize()
        assert torch.equal(got, want)
        assert relative_error(got, reference_mm(problem, ops)) <= 5e-3
    if weight_only:
        wide = torch.zeros(m, 2 * 1088, dtype=torch.bfloat16, device="cuda")[:, ::2]
        with pytest.raises(ValueError, match="contiguous bfloat16"):
            launch(wide, None, first.alpha, got)


# ---- programmatic dependent launch: back-to-back launches, eager without PDL vs graph with it --
PDL_EXTRA = [CutlassTactic(tm=16, bn=128, split_k=3, cluster=1), CutlassTactic(tm=64, bn=64, split_k=1, cluster=2),
             CutlassTactic(tm=128, bn=128, split_k=2, cluster=1, deep=1)]


@pytest.mark.parametrize("m", [16, 130])
def test_pdl_w4a4_back_to_back_is_bit_identical(m):
    """Four calls on different activations into their own outputs, then two into one shared
    output (write after write); they share the pre-pass buffer and the split-K partials, which
    a call launched with PDL may touch only after waiting for the call before it."""
    be = CutlassBackend()
    problem = _problem(m, 1024, 2048)
    gen = torch.Generator(device="cuda").manual_seed(60 + m)
    ops = [random_operands(problem, device="cuda", generator=gen) for _ in range(4)]
    for o in ops[1:]:
        o.b.copy_(ops[0].b)
        o.b_scale.copy_(ops[0].b_scale)
    outs = [torch.empty(m, 1024, dtype=torch.bfloat16, device="cuda") for _ in range(5)]
    for tac in be.tactics(problem) + PDL_EXTRA:
        calls = [lambda i=i: be.run(problem, ops[i], tac, outs[i]) for i in range(4)]
        calls += [lambda: be.run(problem, ops[0], tac, outs[4]), lambda: be.run(problem, ops[1], tac, outs[4])]
        for c in calls:
            c()
        check_back_to_back(calls, outs, label=f"m={m} {tac}")


@pytest.mark.parametrize("nv", [True, False], ids=["nvfp4", "mxfp4"])
@pytest.mark.parametrize("m", [1, 130])
def test_pdl_w4a16_chain_is_bit_identical(m, nv):
    """Four weight-only layers, each reading the previous one's output (N = K, weights scaled
    so values stay O(1)), bound launchers as Fp4Linear uses them."""
    be = CutlassBackend()
    n = k = 1024
    problem = fp4core.make_problem(m, n, k, use_nvfp4=nv, device="cuda", act_dtype=torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(70 + m + nv)
    b, bsf, alpha = quantize_weight(torch.randn(n, k, device="cuda", generator=g) / k ** 0.5, nv)
    ys = [torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)] + \
         [torch.empty(m, n, dtype=torch.bfloat16, device="cuda") for _ in range(4)]
    weight = fp4core.Operands(None, None, b, bsf)
    for tac in be.tactics(problem) + PDL_EXTRA[:1]:
        launch = be.bind(problem, weight, tac)
        calls = [lambda i=i: launch(ys[i], None, alpha, ys[i + 1]) for i in range(4)]
        for c in calls:
            c()
        torch.cuda.synchronize()
        assert torch.isfinite(ys[4]).all(), "the chain overflowed: the check needs finite values"
        check_back_to_back(calls, ys[1:], label=f"m={m} {tac}")
