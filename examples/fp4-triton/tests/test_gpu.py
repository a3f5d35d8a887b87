"""GPU tests: every tactic against the exact reference, odd shapes, both formats, both scale
layouts of A, the public mm_fp4 path, CUDA-graph replay and no allocation per call."""

import dataclasses

import pytest
import torch

import fp4core
from fp4core.formats.reference import reference_mm, relative_error
from fp4core.testing import canonical_operands, check_backend, device_allocations
from fp4_triton.plugin import TritonBackend
from fp4_triton.tactics import TritonTactic

pytestmark = pytest.mark.gpu


def cuda_problem(m, n, k, **kw):
    return fp4core.make_problem(m, n, k, device="cuda", **kw)


@pytest.mark.parametrize("nvfp4", [True, False], ids=["nvfp4", "mxfp4"])
@pytest.mark.parametrize("m", [1, 16, 48, 200, 1000])
def test_every_tactic_matches_the_reference(m, nvfp4):
    p = cuda_problem(m, 512, 1024, use_nvfp4=nvfp4)
    results = check_backend("triton", p, seed=m)
    assert len(results) == len(TritonBackend().tactics(p))


@pytest.mark.parametrize("m, n, k, nvfp4, a8x4, out_dtype", [
    (7, 200, 208, True, False, torch.bfloat16),      # K tail, N not a tile multiple
    (3, 72, 96, True, True, torch.float16),          # 8x4 A scales, fp16 out
    (129, 136, 224, False, False, torch.bfloat16),   # MXFP4, rows past a 128-row scale tile
    (33, 1040, 640, False, True, torch.float16),
    (257, 96, 4128, True, False, torch.float16),     # long K with a tail
])
def test_odd_shapes(m, n, k, nvfp4, a8x4, out_dtype):
    p = cuda_problem(m, n, k, use_nvfp4=nvfp4, use_8x4_sf_layout=a8x4, out_dtype=out_dtype)
    tactics = TritonBackend().tactics(p)[:2] + [
        TritonTactic(bm=16, bn=32, bk=64, warps=4, stages=2, split_k=3, swap=1)]
    check_backend("triton", p, seed=k, tactics=tactics)


def test_without_alpha_and_mm_fp4_path():
    x = torch.randn(37, 512, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(300, 512, device="cuda", dtype=torch.bfloat16)
    gx, gw = fp4core.compute_global_scale(x), fp4core.compute_global_scale(w)
    a, a_sf = fp4core.nvfp4_quantize(x, gx)
    b, b_sf = fp4core.nvfp4_quantize(w, gw)
    out = fp4core.mm_fp4(a, b.T, a_sf, b_sf.T, 1 / (gx * gw), torch.bfloat16, backend="triton")
    ref = fp4core.mm_fp4(a, b.T, a_sf, b_sf.T, 1 / (gx * gw), torch.bfloat16, backend="torch")
    assert relative_error(out, ref.double()) <= 1e-2
    rel = (out.float() - x.float() @ w.float().T).norm() / (x.float() @ w.float().T).norm()
    assert rel < 0.2, f"far from the unquantized product: {rel:.3g}"  # FP4 noise ~0.1
    mx, mx_sf = fp4core.mxfp4_quantize(x)
    mw, mw_sf = fp4core.mxfp4_quantize(w)
    out = fp4core.mm_fp4(mx, mw.T, mx_sf, mw_sf.T, None, torch.float16, block_size=32,
                         use_nvfp4=False, backend="triton")
    ref = fp4core.mm_fp4(mx, mw.T, mx_sf, mw_sf.T, None, torch.float16, block_size=32,
                         use_nvfp4=False, backend="torch")
    assert out.dtype == torch.float16 and relative_error(out, ref.double()) <= 1e-2


def test_nan_scale_poisons_only_its_rows():
    p = cuda_problem(64, 256, 512)
    ops = canonical_operands(p, seed=3)
    from fp4core.formats.layouts import scale_offsets
    off = scale_offsets(64, 512 // 16, p.a_sf_layout, "cuda")
    ops.a_scale[off[5, 3]] = 0x7F  # E4M3 NaN in row 5
    out = torch.empty(64, 256, dtype=torch.bfloat16, device="cuda")
    be = TritonBackend()
    be.run(p, ops, be.tactics(p)[0], out)
    assert out[5].isnan().all() and not out[torch.arange(64, device="cuda") != 5].isnan().any()


@pytest.mark.parametrize("split", [1, 4])
def test_cuda_graph_replay_equals_eager_and_no_allocation(split):
    p = cuda_problem(16, 1024, 2048)
    be = TritonBackend()
    tactic = dataclasses.replace(be.tactics(p)[0], split_k=split)
    sets = [canonical_operands(p, seed=s) for s in (1, 2)]
    eager = torch.empty(16, 1024, dtype=torch.bfloat16, device="cuda")
    be.run(p, sets[0], tactic, eager)      # compiles, allocates the split-K workspace
    with device_allocations() as repeated:
        be.run(p, sets[1], tactic, eager)
    assert repeated.allocations == 0, f"allocated on a repeated call: {repeated}"
    static = canonical_operands(p, seed=1)
    out = torch.full_like(eager, float("nan"))
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph):
            be.run(p, static, tactic, out)
    for s in (1, 2):
        src = canonical_operands(p, seed=s)
        for name in ("a", "a_scale", "b", "b_scale", "alpha"):
            getattr(static, name).copy_(getattr(src, name))
        graph.replay()
        be.run(p, src, tactic, eager)
        torch.cuda.synchronize()
        assert torch.equal(out, eager), f"graph replay differs from eager (set {s})"
        assert relative_error(out, reference_mm(p, src, torch.float64)) <= 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("act_dtype, use_nvfp4", [(torch.bfloat16, True), (torch.bfloat16, False),
                                                  (torch.float16, True)])
@pytest.mark.parametrize("m", [1, 7, 33, 1000])
def test_weight_only_every_tactic_matches_the_reference(act_dtype, use_nvfp4, m):
    """W4A16: activations read in natural K order, every tactic against the exact reference,
    output poisoned first (check_backend)."""
    from fp4core.testing import check_backend
    for n, k in ((1280, 2880), (7168, 512)):
        problem = fp4core.make_problem(m, n, k, use_nvfp4=use_nvfp4, device="cuda", act_dtype=act_dtype)
        assert all(r.error <= 1e-2 for r in check_backend("triton", problem, seed=m + n))
