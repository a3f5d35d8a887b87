"""The Triton quantization kernels write the same bytes as the CPU reference quantizers.

GPU (marked): random shapes (rows not a multiple of the tile, K of several blocks), every
format, layout and input dtype, explicit and "auto" global scales, and edge inputs (zeros,
negative zeros, huge values that saturate, subnormals, NaN, Inf). CPU: the same kernels
under Triton's interpreter when Triton is installed (skipped otherwise).
"""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import fp4core
from fp4core.formats.fp4 import Fp4Format
from fp4core.formats.layouts import SfLayout

LAYOUTS = [SfLayout.layout_128x4, SfLayout.layout_8x4, SfLayout.layout_linear]


def edge_inputs(rows, k, dtype, seed=0):
    """Random data across 12 decades plus rows of edge values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g) * torch.logspace(-5, 6, rows)[:, None]
    x[0, : min(k, 40)] = 0.0
    if rows > 1:
        x[1, :] = -0.0
    if rows > 2:
        x[2, 3] = float("nan")
    if rows > 3:
        x[3, k - 1] = float("inf")
        x[3, 0] = float("-inf")
    if rows > 4:
        x[4, :] = 1e-40  # float32 subnormals (0 in bf16/fp16)
    if rows > 5:
        x[5, ::7] = 3e38 if dtype == torch.float32 else 6e4  # saturating
    if rows > 6:
        x[6, :16] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 2)  # E2M1 ties
    return x.to(dtype)


def check_bytes(x_cpu: torch.Tensor, device: str, fmt: Fp4Format, layout: SfLayout, gs) -> None:
    """quantize on ``device`` (the kernels) == quantize on the CPU (the reference)."""
    x_dev = x_cpu.to(device)
    if fmt is Fp4Format.NVFP4:
        if gs == "auto":
            q, sf, g = fp4core.quantize_fp4(x_dev, "nvfp4", layout, "auto")
            g_ref = fp4core.compute_global_scale(x_cpu)
            assert torch.equal(g.cpu(), g_ref.reshape(1)), (g, g_ref)
        else:
            g_ref = torch.tensor([gs], dtype=torch.float32)
            q, sf = fp4core.nvfp4_quantize(x_dev, g_ref.to(device), layout)
        q_ref, sf_ref = fp4core.nvfp4_quantize(x_cpu, g_ref, layout)
    else:
        q, sf = fp4core.mxfp4_quantize(x_dev, layout)
        q_ref, sf_ref = fp4core.mxfp4_quantize(x_cpu, layout)
    assert q.device.type == torch.device(device).type
    assert q.shape == q_ref.shape and sf.shape == sf_ref.shape
    bad_q = (q.cpu() != q_ref).nonzero()
    bad_s = (sf.cpu() != sf_ref).nonzero()
    assert bad_q.numel() == 0, f"codes differ at {bad_q[:5].tolist()} ({fmt.value} {layout.value} gs={gs})"
    assert bad_s.numel() == 0, f"scales differ at {bad_s[:5].tolist()} ({fmt.value} {layout.value} gs={gs})"


CASES = [(fmt, layout, gs) for fmt in Fp4Format for layout in LAYOUTS
         for gs in (["auto", 1.0, 2.5e4] if fmt is Fp4Format.NVFP4 else [None])]


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,layout,gs", CASES, ids=lambda v: getattr(v, "value", str(v)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kernels_byte_equal_reference(fmt, layout, gs, dtype):
    from fp4core.formats.kernels import quantize_kernels, unavailable_reason
    assert quantize_kernels() is not None, unavailable_reason()
    for i, (rows, k) in enumerate([(1, 64), (7, 128), (130, 320), (257, 1024)]):
        check_bytes(edge_inputs(rows, k, dtype, seed=i), "cuda", fmt, layout, gs)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,gs", [(Fp4Format.NVFP4, "auto"), (Fp4Format.MXFP4, None)])
def test_kernels_byte_equal_reference_large(fmt, gs):
    check_bytes(edge_inputs(2048 + 3, 8192, torch.bfloat16, seed=9), "cuda", fmt, SfLayout.layout_128x4, gs)


@pytest.mark.gpu
def test_kernels_on_strided_rows_and_all_zero_input():
    x = torch.randn(64, 512)[:, :256]  # row stride 512
    check_bytes(x, "cuda", Fp4Format.NVFP4, SfLayout.layout_128x4, "auto")
    check_bytes(torch.zeros(9, 64), "cuda", Fp4Format.NVFP4, SfLayout.layout_128x4, "auto")
    check_bytes(torch.zeros(9, 64), "cuda", Fp4Format.MXFP4, SfLayout.layout_8x4, None)
    q, sf, g = fp4core.quantize_fp4(torch.zeros(9, 64, device="cuda"))
    assert g.item() == 1.0


@pytest.mark.gpu
def test_cuda_graph_capture_of_quantization_replays_identically():
    x = torch.randn(33, 256, device="cuda")
    fp4core.quantize_fp4(x)  # compile the kernels outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q, sf, g = fp4core.quantize_fp4(x)
    x.copy_(torch.randn(33, 256))
    graph.replay()
    q2, sf2, g2 = fp4core.quantize_fp4(x)
    assert torch.equal(q, q2) and torch.equal(sf, sf2) and torch.equal(g, g2)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["dynamic", "static", "mxfp4"])
def test_bound_activation_quantizer_equals_quantize_activation_on_every_call(mode):
    """The plan's bound quantizer (integer pointers, reused buffers) gives the bytes of
    quantize_activation on fresh data every call, and steps aside (fresh outputs) on another
    stream, under capture, and for another shape."""
    from fp4core.formats.kernels import quantize_triton as qt
    fmt = Fp4Format.MXFP4 if mode == "mxfp4" else Fp4Format.NVFP4
    layout = SfLayout.layout_128x4
    gs = torch.tensor([3.5e3], device="cuda") if mode == "static" else None
    wgs = torch.tensor([0.37], device="cuda") if fmt is Fp4Format.NVFP4 else None
    quant = qt.ActivationQuantizer(fmt, layout)
    x = torch.empty(5, 512, dtype=torch.bfloat16, device="cuda")
    outs = []
    for step in range(4):
        x.copy_(torch.randn(5, 512) * 10 ** step)  # same pointer, new data
        if step == 3:
            x = torch.randn(5, 512, dtype=torch.bfloat16, device="cuda")  # new pointer
        q, sf, alpha = quant(x, gs, wgs)
        q_ref, sf_ref, alpha_ref = qt.quantize_activation(x, fmt, layout, gs, wgs)
        assert torch.equal(q, q_ref) and torch.equal(sf, sf_ref.view(-1)), step
        assert (alpha is None) == (alpha_ref is None)
        if alpha is not None:
            assert torch.equal(alpha, alpha_ref), (step, alpha, alpha_ref)
        outs.append(q.data_ptr())
    assert len(set(outs)) == 1, "the bound quantizer reuses its buffers on one stream"
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        q_side, _, _ = quant(x, gs, wgs)
    side.synchronize()
    assert q_side.data_ptr() != outs[0] and torch.equal(q_side, quant(x, gs, wgs)[0])
    q_other, _, _ = quant(x[:3].contiguous(), gs, wgs)
    assert q_other.shape == (3, 256) and q_other.data_ptr() != outs[0]


@pytest.mark.gpu
def test_bound_quantizer_on_an_odd_row_stride_reads_the_input_every_call():
    """A slice with an odd row stride is quantized from a contiguous copy; the bound
    quantizer must not keep that copy's (freed) address: fresh data each call, right bytes."""
    from fp4core.formats.kernels import quantize_triton as qt
    fmt, layout = Fp4Format.NVFP4, SfLayout.layout_128x4
    wgs = torch.tensor([0.37], device="cuda")
    quant = qt.ActivationQuantizer(fmt, layout)
    base = torch.empty(6, 513, dtype=torch.bfloat16, device="cuda")
    x = base[:, :512]
    assert x.stride(0) % 2 == 1 and x.data_ptr() % 16 == 0
    for step in range(3):
        base.copy_(torch.randn(6, 513) * 10 ** step)
        junk = torch.full((6, 512), 7.0, dtype=torch.bfloat16, device="cuda")  # may reuse a freed copy
        q, sf, alpha = quant(x, None, wgs)
        q_ref, sf_ref, alpha_ref = qt.quantize_activation(x, fmt, layout, None, wgs)
        assert torch.equal(q, q_ref) and torch.equal(sf, sf_ref.view(-1)) and torch.equal(alpha, alpha_ref), step
        del junk
    # captured, the copy to a contiguous buffer is part of the graph: a replay reads new data
    gs = torch.tensor([3.5e3], device="cuda")
    quant(x, gs, wgs)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q_cap, sf_cap, _ = quant(x, gs, wgs)
    base.copy_(torch.randn(6, 513) * 3)
    graph.replay()
    q_ref, sf_ref, _ = qt.quantize_activation(x, fmt, layout, gs, wgs)
    assert torch.equal(q_cap, q_ref) and torch.equal(sf_cap, sf_ref.view(-1))


_INTERPRETER_SCRIPT = r"""
import sys, torch, fp4core
sys.path.insert(0, {tests!r})
from test_quantize_gpu import CASES, edge_inputs
from fp4core.formats.fp4 import Fp4Format
from fp4core.formats.kernels import quantize_triton as qt
from fp4core.testing import guarded_copy
for fmt, layout, gs in CASES:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for i, (rows, k) in enumerate([(9, 64), (130, 96), (40, 2880)]):
            # the input right before an unreadable page: a read past it is a SIGSEGV
            x = guarded_copy(edge_inputs(rows, k, dtype, seed=i))
            if fmt is Fp4Format.NVFP4:
                g_ref = fp4core.compute_global_scale(x) if gs == "auto" else torch.tensor([gs])
                q, sf, g = qt.quantize(x, fmt, layout, None if gs == "auto" else g_ref, gs == "auto")
                assert torch.equal(g, g_ref.reshape(1)), (g, g_ref)
                q_ref, sf_ref = fp4core.nvfp4_quantize(x, g_ref, layout)
            else:
                q, sf, _ = qt.quantize(x, fmt, layout, None, False)
                q_ref, sf_ref = fp4core.mxfp4_quantize(x, layout)
            assert torch.equal(q, q_ref), (fmt, layout, gs, dtype, (q != q_ref).nonzero()[:5])
            assert torch.equal(sf, sf_ref), (fmt, layout, gs, dtype, (sf != sf_ref).nonzero()[:5])
print("interpreter: all equal")
"""


_E2M1_SCRIPT = r"""
import torch, triton, triton.language as tl
from fp4core.formats.fp4 import e2m1_encode
from fp4core.formats.kernels.quantize_triton import _e2m1_magnitude

@triton.jit
def codes(x_ptr, out_ptr, n, B: tl.constexpr):
    i = tl.program_id(0) * B + tl.arange(0, B)
    tl.store(out_ptr + i, _e2m1_magnitude(tl.load(x_ptr + i, mask=i < n)), mask=i < n)

# every E2M1 rounding boundary and value, one ulp either side, both signs, zeros, values
# past the saturation point, and random magnitudes over the whole range
edges = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0,
                      7.0, 1e30, 3.4e38, 1e-40, 1e-30])
up = torch.nextafter(edges, torch.tensor(float("inf")))
down = torch.nextafter(edges, torch.tensor(0.0))
g = torch.Generator().manual_seed(7)
rnd = torch.rand(200000, generator=g) * 8.0
x = torch.cat([edges, up, down, rnd])
x = torch.cat([x, -x])
out = torch.empty(x.numel(), dtype=torch.int32)
codes[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), B=1024)
ref = e2m1_encode(x).to(torch.int32) & 7  # magnitude; the kernels take signs from the input
out &= 0xFF  # the code is the low byte; the kernel drops the rest
bad = (out != ref).nonzero().flatten()
assert bad.numel() == 0, [(x[i].item(), out[i].item(), ref[i].item()) for i in bad[:8]]
print("e2m1: all equal")
"""


@pytest.mark.skipif(not importlib.util.find_spec("triton") or torch.cuda.is_available(),
                    reason="needs triton; with a GPU the GPU tests run the real kernels")
def test_e2m1_rounding_on_the_bits_matches_the_reference_in_the_interpreter():
    """The kernels' E2M1 rounding of the magnitude against ``e2m1_encode`` on every rounding
    boundary and its neighbours (ties to even, saturation, both signs, zeros) and 400k random
    values (signs are checked by the byte-equality tests)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", _E2M1_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "all equal" in res.stdout


def _has_triton() -> bool:
    import importlib.util
    return importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not _has_triton() or torch.cuda.is_available(),
                    reason="needs triton; with a GPU the GPU tests run the real kernels")
def test_kernels_byte_equal_reference_in_the_triton_interpreter():
    """The kernels' arithmetic on the CPU through Triton's interpreter (no GPU needed); the
    kernel module is called directly because the public functions use it for CUDA tensors only."""
    script = _INTERPRETER_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "all equal" in res.stdout


def one_pass_inputs(dtype):
    """Inputs for the one-launch dynamic quantization: the finite maximum beside a NaN in the
    same element pair, at the very last element, in a strided row view, and all in one row."""
    g = torch.Generator().manual_seed(11)
    a = torch.randn(7, 256, generator=g)
    a[2, 10], a[2, 11] = float("nan"), 900.0  # pair (NaN, max): the NaN must not hide the max
    b = torch.randn(1, 8192 + 512, generator=g)  # more than one step of 4096 pairs
    b[0, -1] = -1234.5  # the maximum magnitude at the last element
    b[0, 5] = float("inf")
    c = (torch.randn(5, 384, generator=g) * 3)[:, :256]  # row stride 384
    c[4, 255] = 77.0
    # (the linear layout for the long row: fewer programs, for the interpreter's sake)
    return [(a.to(dtype), SfLayout.layout_128x4), (b.to(dtype), SfLayout.layout_linear),
            (c.to(dtype), SfLayout.layout_8x4)]


def check_one_pass(device: str) -> None:
    """Dynamic NVFP4 quantization of small inputs: one launch (each program takes the maximum
    itself) and the same bytes, global scale and alpha as two launches and as the reference."""
    from fp4core.formats.kernels import quantize_triton as qt
    wgs = torch.tensor([0.37], device=device)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for x_cpu, layout in one_pass_inputs(dtype):
            x = x_cpu.to(device)
            assert x.numel() <= qt.ONE_PASS_MAX_ELEMS
            launches, _ = qt._plan(x, Fp4Format.NVFP4, layout, None, True, wgs, None)
            assert len(launches) == 1, "a small dynamic quantization should be one launch"
            one = qt.quantize_activation(x, Fp4Format.NVFP4, layout, None, wgs)
            saved = qt.ONE_PASS_MAX_ELEMS
            qt.ONE_PASS_MAX_ELEMS = 0
            try:
                assert len(qt._plan(x, Fp4Format.NVFP4, layout, None, True, wgs, None)[0]) == 2
                two = qt.quantize_activation(x, Fp4Format.NVFP4, layout, None, wgs)
            finally:
                qt.ONE_PASS_MAX_ELEMS = saved
            g_ref = fp4core.compute_global_scale(x_cpu)
            q_ref, sf_ref = fp4core.nvfp4_quantize(x_cpu, g_ref, layout)
            alpha_ref = torch.reciprocal(g_ref.reshape(1) * wgs.cpu())
            for label, (q, sf, alpha) in (("one launch", one), ("two launches", two)):
                assert torch.equal(q.cpu(), q_ref), (label, dtype, (q.cpu() != q_ref).nonzero()[:5])
                assert torch.equal(sf.cpu(), sf_ref), (label, dtype, (sf.cpu() != sf_ref).nonzero()[:5])
                assert torch.equal(alpha.cpu(), alpha_ref), (label, dtype, alpha, alpha_ref)


@pytest.mark.gpu
def test_small_dynamic_quantization_is_one_launch_with_the_same_bytes():
    check_one_pass("cuda")


@pytest.mark.skipif(not _has_triton() or torch.cuda.is_available(),
                    reason="needs triton; with a GPU the GPU test above runs the real kernels")
def test_small_dynamic_quantization_is_one_launch_in_the_triton_interpreter():
    script = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
              "from test_quantize_gpu import check_one_pass\ncheck_one_pass('cpu')\nprint('one pass: all equal')\n")
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "all equal" in res.stdout


def test_one_pass_limit_from_the_environment_is_checked():
    if not _has_triton():
        pytest.skip("needs triton")
    env = dict(os.environ, FP4CORE_QUANT_ONE_PASS_MAX="lots", TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", "import fp4core.formats.kernels.quantize_triton"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "FP4CORE_QUANT_ONE_PASS_MAX='lots'" in res.stderr
    env["FP4CORE_QUANT_ONE_PASS_MAX"] = "0"
    res = subprocess.run([sys.executable, "-c", "from fp4core.formats.kernels import quantize_triton as qt; "
                          "print(qt.ONE_PASS_MAX_ELEMS)"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "0", res.stderr[-2000:]


@pytest.mark.skipif(not _has_triton(), reason="needs triton")
@pytest.mark.parametrize("rows,k", [(5, 512), (1, 8192), (64, 4096)], ids=["one-pass", "one-row", "two-pass"])
@pytest.mark.parametrize("gs_mode", ["dynamic", "static", "mxfp4"])
def test_every_planned_pointer_is_one_a_bound_quantizer_can_keep(rows, k, gs_mode):
    """ActivationQuantizer binds a plan only if each tensor argument is the input, a scale the
    caller passes, or memory inside the outputs it keeps (codes, scales, scratch); otherwise every
    call falls back to the slow generic path. Checked on the plan itself (no launch needed)."""
    from fp4core.formats.kernels import quantize_triton as qt
    fmt = Fp4Format.MXFP4 if gs_mode == "mxfp4" else Fp4Format.NVFP4
    x = torch.randn(rows, k, dtype=torch.bfloat16)
    gs = torch.tensor([3.5e3]) if gs_mode == "static" else None
    wgs = torch.tensor([0.37]) if fmt is Fp4Format.NVFP4 else None
    launches, outputs = qt._plan(x, fmt, SfLayout.layout_128x4, gs, gs_mode == "dynamic", wgs, None)
    assert len(launches) == (2 if gs_mode == "dynamic" and rows * k > qt.ONE_PASS_MAX_ELEMS else 1)
    callers = {x.data_ptr(), x.view(torch.int32).data_ptr()} | {t.data_ptr() for t in (gs, wgs) if t is not None}
    kept = [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            for t in outputs if isinstance(t, torch.Tensor)]
    for _, _, args, _ in launches:
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor) and a.data_ptr() not in callers:
                assert any(base <= a.data_ptr() < base + size for base, size in kept), \
                    f"argument {i} points outside the kept outputs ({gs_mode}, {rows}x{k})"


@pytest.mark.skipif(not _has_triton(), reason="needs triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_a_contiguous_view_at_an_odd_offset_is_read_as_pairs_from_a_copy(dtype):
    """The kernels read the input as one integer per pair of elements: a contiguous view that
    starts at an odd element (a slice of a larger buffer) cannot be viewed so and must be
    copied; ``contiguous()`` returned it unchanged and the view raised."""
    from fp4core.formats.kernels import quantize_triton as qt
    base = torch.randn(6 * 64 + 1, dtype=dtype)
    x = base[1:].view(6, 64)
    assert x.is_contiguous() and x.storage_offset() == 1
    pairs, _ = qt._as_pairs(x)
    assert pairs.shape == (6, 32)
    assert torch.equal(pairs.view(dtype), x)
