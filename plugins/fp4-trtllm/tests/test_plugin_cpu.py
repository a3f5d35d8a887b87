"""CPU checks: the plugin installs and registers, answers supports/tactics, and its CUDA
source compiles for sm_90a and sm_100a (compile-only, needs nvcc)."""

import json
from importlib import metadata

import pytest
import torch

import fp4core
from fp4core.kit import jit
from fp4core.dispatch.problem import DeviceInfo
from fp4core.dispatch.synthetic import random_weight
from fp4core.testing import global_access_before_pdl_wait
from fp4core.formats.fp4 import Fp4Format

from fp4_trtllm import launcher
from fp4_trtllm.plugin import TrtllmBackend, TrtllmTactic

needs_nvcc = pytest.mark.skipif(jit.nvcc_path() is None, reason="nvcc not installed")
H100 = DeviceInfo("cuda", 0, "hypothetical H100", (9, 0))


def test_entry_point_registered():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="fp4core.backends")}
    assert eps.get("trtllm") == "fp4_trtllm.plugin:TrtllmBackend"
    rows = {b.name: b for b in fp4core.backends()}
    assert rows["trtllm"].status == "loaded", rows["trtllm"]
    assert rows["trtllm"].package == "fp4-trtllm"


def test_supports_reasons_on_cpu():
    be = TrtllmBackend()
    why = be.supports(fp4core.make_problem(16, 256, 256, device="cpu"))
    assert not why and "needs a CUDA device" in why.reason
    assert not be.supports(fp4core.make_problem(16, 256, 96, device=H100))  # K % 64
    assert "M <= 256" in be.supports(fp4core.make_problem(300, 256, 256, device=H100)).reason
    old = DeviceInfo("cuda", 0, "old", (7, 5))
    assert "SM80" in be.supports(fp4core.make_problem(1, 256, 256, device=old)).reason


@needs_nvcc
def test_supports_yes_on_sm90():
    assert TrtllmBackend().supports(fp4core.make_problem(16, 8192, 8192, device=H100))


def test_info_and_auto_exclusion_without_prepare():
    info = TrtllmBackend().backend_info()
    assert info.name == "trtllm" and info.needs_prepare
    p = fp4core.make_problem(8, 256, 256, device=H100)
    assert info.priority_for(p) == 50
    exp = fp4core.explain(p)
    assert "fp4core.prepare" in exp.excluded["trtllm"]


@pytest.mark.parametrize("m", [1, 3, 16, 33, 64, 200])
def test_tactics_are_json_and_valid(m):
    p = fp4core.make_problem(m, 8192, 8192, device=H100)
    tacs = TrtllmBackend().tactics(p)
    assert tacs and all(type(t) is TrtllmTactic for t in tacs)
    assert [TrtllmTactic.from_json(json.loads(json.dumps(t.to_json()))) for t in tacs] == tacs
    kinds = {t.kernel for t in tacs}
    assert kinds == {"streamk", "splitk"}, tacs
    for t in tacs:
        if t.kernel == "streamk":
            assert t.split_k is None and t.ring is None, t
            assert t.t in (1, 2, 4, 8) and t.warps in (1, 2, 4, 8) and t.ctas >= 0
            assert t.label() == f"ctas={t.ctas},kernel=streamk,t={t.t},warps={t.warps}"
        else:
            assert t.ctas is None, t
            assert t.t in (1, 2, 4) and 1 <= t.warps <= 8 and t.split_k >= 1
            assert t.ring in (0, 1)
            assert t.label() == f"kernel=splitk,ring={t.ring},split_k={t.split_k},t={t.t},warps={t.warps}"
        if launcher.nt_for(m) == 8:
            assert t.t <= 2
    # split-K with the ring (the fastest on the H200 at every M measured) leads
    assert tacs[0].kernel == "splitk" and tacs[0].ring == 1
    assert len(set(tacs)) == len(tacs)  # no duplicates


def test_tactic_defaults_and_old_cache_json():
    # the JSON dicts of earlier versions (as tuning caches hold them) read back as before
    old = {"kernel": "splitk", "t": 2, "warps": 4, "split_k": 6, "ring": 1}
    assert TrtllmTactic.from_json(old) == TrtllmTactic("splitk", t=2, warps=4, split_k=6, ring=1)
    assert TrtllmTactic.from_json({}) == TrtllmTactic("streamk", t=4, warps=4, ctas=0)
    assert TrtllmTactic("splitk").to_json() == {"kernel": "splitk", "t": 4, "warps": 4, "ctas": None,
                                                "split_k": 0, "ring": 0}
    with pytest.raises(ValueError, match="kernel"):
        TrtllmTactic.from_json({"kernel": "gemv"})


def test_arch_for():
    assert launcher.arch_for((9, 0)) == "sm_90a"
    assert launcher.arch_for((8, 0)) == "sm_80"
    assert launcher.arch_for((10, 0)) == "sm_100a"


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_90a", "sm_100a", "sm_80"])
@pytest.mark.parametrize("source", launcher.SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles(arch, source, tmp_path, monkeypatch):
    monkeypatch.setenv(jit.ENV_CACHE, str(tmp_path))
    obj = jit.build("fp4_trtllm_check", [source], arch=arch, kind="object", progress=False)
    assert obj.stat().st_size > 10000


def test_build_hook_skips_old_archs_and_names_the_library(monkeypatch):
    built = []
    monkeypatch.setattr(jit, "build", lambda name, srcs, **kw: built.append((name, kw["arch"])) or f"/x/{kw['arch']}.so")
    lines = TrtllmBackend().build(["sm_75", "sm_90a", "sm_100a"], False)
    assert built == [(launcher.LIB_NAME, "sm_90a"), (launcher.LIB_NAME, "sm_100a")]
    assert len(lines) == 2 and "sm_90a" in lines[0]


def _ranges(units, grid):
    """CTA b's units, as the kernel computes them: [floor(b U / P), floor((b+1) U / P))."""
    return [(units * b // grid, units * (b + 1) // grid) for b in range(grid)]


@pytest.mark.parametrize("m,n,k,t,warps,grid", [
    (1, 8192, 8192, 4, 4, 264), (64, 8192, 8192, 2, 8, 132), (16, 2880, 1024, 4, 4, 192),
    (1, 1280, 2880, 1, 4, 264), (200, 1040, 640, 2, 4, 50), (7, 7168, 2048, 2, 8, 1)])
def test_stream_k_partition(m, n, k, t, warps, grid):
    """The kernel's work split, restated: every unit is owned by exactly one CTA; a segment
    (activation block, group) split between CTAs lists them as cta_of(first)..cta_of(last),
    each of which owns part of it; partial slots (CTA, first-or-last) never collide."""
    nt, groups, mblocks, units = launcher.geometry(m, n, k, t, warps)
    grid = min(grid, units)
    chunks = k // 64
    ranges = _ranges(units, grid)
    assert all(lo < hi for lo, hi in ranges) and ranges[0][0] == 0 and ranges[-1][1] == units
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(grid - 1))

    def cta_of(u):  # as in the kernel
        return ((u + 1) * grid - 1) // units

    owner = [b for b, (lo, hi) in enumerate(ranges) for _ in range(lo, hi)]
    assert all(cta_of(u) == owner[u] for u in range(units))
    slots = set()
    for x in range(mblocks * groups):
        first, last = cta_of(x * chunks), cta_of(x * chunks + chunks - 1)
        parts = set(owner[x * chunks:(x + 1) * chunks])
        assert parts == set(range(first, last + 1))
        if first == last:
            continue  # complete in one CTA: stored directly
        for b in parts:
            slot = (b, 0 if x == ranges[b][0] // chunks else 1)
            assert slot not in slots
            slots.add(slot)


@pytest.mark.parametrize("n,k,t,warps", [(28672, 8192, 4, 4), (28672, 8192, 4, 1), (8192, 8192, 4, 1),
                                         (8192, 28672, 2, 2), (2880, 1024, 2, 4), (1280, 2880, 4, 4)])
def test_balanced_splits_spread_the_grid_evenly(n, k, t, warps):
    """Against a brute force over every split count (132 SMs, 228 KiB each, M = 1): the chosen
    grids are resident in one wave, keep 6 warps on the busiest SM, and the first has the best
    balance between the SMs."""
    from fp4_trtllm.plugin import _balanced_splits
    p = fp4core.make_problem(1, n, k, device=H100)
    gx = -(-(-(-n // 16)) // (warps * t))
    ring_bytes = (5 if t >= 4 else 6) * (t * 576 + 384)  # NVFP4, one activation tile
    per_sm = min(16 // warps, 228 * 1024 // (warps * ring_bytes + 1024))

    def score(s):
        return gx * s / (132 * -(-gx * s // 132))

    allowed = [s for s in range(1, k // 256 + 1) if gx * s <= per_sm * 132]
    allowed = [s for s in allowed if -(-gx * s // 132) * warps >= 6] or allowed
    chosen = _balanced_splits(p, t, warps, keep=3)
    assert chosen and set(chosen) <= set(allowed)
    assert score(chosen[0]) == pytest.approx(max(score(s) for s in allowed), abs=1e-3)
    assert [score(s) for s in chosen] == sorted((score(s) for s in chosen), reverse=True)
    if (n, warps) == (28672, 1):
        assert chosen[0] == 2 and score(2) > 0.95  # 896 CTAs: 6 or 7 per SM; 4-warp CTAs reach 0.85


def test_misaligned_activations_are_refused_with_the_addresses():
    """The kernels' 8-byte A loads and 4-byte stream-K scale copies would fault on inputs at
    odd offsets; the launcher refuses them (auto then falls back) instead of launching."""
    with pytest.raises(ValueError, match="A must start 8-byte aligned.*0x1004"):
        launcher._check_alignment(0x1004, 0x2000, False)
    with pytest.raises(ValueError, match="scales 4-byte aligned"):
        launcher._check_alignment(0x1000, 0x2002, True)
    launcher._check_alignment(0x1000, 0x2002, False)  # split-K: unaligned scales only turn its ring off
    launcher._check_alignment(0x1008, 0x2004, True)


@pytest.mark.parametrize("m", [1, 7, 16, 33, 64])
@pytest.mark.parametrize("fmt,act", [("nvfp4", torch.bfloat16), ("nvfp4", torch.float16), ("mxfp4", torch.bfloat16)])
def test_weight_only_tactics_are_ring_split_k_that_fit(m, fmt, act):
    """W4A16 problems get split-K ring tactics only (the only kernel with a weight-only
    variant), each of whose CTAs fits in one SM's shared memory with the larger activation slots."""
    from fp4_trtllm.plugin import ring_bytes_per_warp
    p = fp4core.make_problem(m, 8192, 8192, use_nvfp4=fmt == "nvfp4", device=H100, act_dtype=act)
    tacs = TrtllmBackend().tactics(p)
    assert tacs and len(set(tacs)) == len(tacs)
    room = 228 * 1024 - 1024  # kit.smem_per_sm's default (no CUDA here), less the CTA's reserve
    for t in tacs:
        assert t.kernel == "splitk" and t.ring == 1 and t.split_k >= 1, t
        t_eff = 2 if t.t > 2 and m > 32 else t.t
        assert t.warps * ring_bytes_per_warp(p, t_eff) <= room, t
    # the W4A4 problem of the same shape keeps its stream-K and register-pipeline tactics
    kinds = {(t.kernel, t.ring) for t in TrtllmBackend().tactics(fp4core.make_problem(m, 8192, 8192, device=H100))}
    assert ("streamk", None) in kinds and ("splitk", 0) in kinds


def test_weight_only_supports_and_refusals():
    be = TrtllmBackend()
    assert "bf16" in be.backend_info().activations and "fp16" in be.backend_info().activations
    mx16 = fp4core.make_problem(8, 256, 256, use_nvfp4=False, device=H100, act_dtype=torch.float16)
    assert "bfloat16 activations" in be.supports(mx16).reason
    big = fp4core.make_problem(65, 256, 256, device=H100, act_dtype=torch.bfloat16)
    assert "M <= 64" in be.supports(big).reason
    p = fp4core.make_problem(8, 256, 256, device=H100, act_dtype=torch.bfloat16)
    ops = fp4core.dispatch.problem.Operands(None, None, None, None, None,
                                            {"fp4_trtllm": {"n": 256, "k": 256, "fmt": "nvfp4", "code": "bf16"}})
    with pytest.raises(ValueError, match="split-K ring kernel only"):
        be._launch_args(p, ops, TrtllmTactic("streamk", t=4, warps=4))
    with pytest.raises(ValueError, match="split-K ring kernel only"):
        be._launch_args(p, ops, TrtllmTactic("splitk", t=4, warps=4, split_k=2, ring=0))
    with pytest.raises(ValueError, match="16-byte aligned.*0x1008"):
        launcher._check_alignment_w16(0x1008)


@pytest.mark.parametrize("act", [None, torch.bfloat16, torch.float16])
def test_prepare_records_the_word_code_and_calls_of_the_other_kind_are_refused(act):
    """NVFP4 weights prepared for weight-only problems are in the bf16 word code, those for FP4
    activations in the f16 one; the bytes decode back to the canonical weight with the recorded
    code, and a call of the other kind gets an error naming the code instead of wrong numbers."""
    from fp4_trtllm.layout import unprepare_weight
    be = TrtllmBackend()
    p = fp4core.make_problem(None, 256, 512, device="cpu", prepared=True, act_dtype=act)
    b, b_sf = random_weight(256, 512, Fp4Format.NVFP4, "cpu", torch.Generator().manual_seed(5))
    ops = be.prepare(p, fp4core.dispatch.problem.Operands(None, None, b, b_sf))
    meta = ops.extra["fp4_trtllm"]
    want = "f16" if act is None else "bf16"
    assert meta["code"] == want
    b2, sf2 = unprepare_weight(ops.b, ops.b_scale, 256, 512, Fp4Format.NVFP4, code=want)
    assert torch.equal(b2, b) and torch.equal(sf2.reshape(-1), b_sf.reshape(-1))
    other = fp4core.make_problem(8, 256, 512, device=H100, act_dtype=torch.bfloat16 if act is None else None)
    tac = TrtllmTactic("splitk", t=1, warps=4, split_k=1, ring=1)
    with pytest.raises(ValueError, match=f"word code is '{want}'"):
        be._launch_args(other, ops, tac)
    same = fp4core.make_problem(8, 256, 512, device=H100, act_dtype=act)
    be._launch_args(same, ops, tac)  # no error
    mx = be.prepare(fp4core.make_problem(None, 256, 512, use_nvfp4=False, device="cpu", prepared=True, act_dtype=act),
                    fp4core.dispatch.problem.Operands(None, None, *random_weight(256, 512, Fp4Format.MXFP4, "cpu")))
    assert mx.extra["fp4_trtllm"]["code"] is None  # MXFP4 keeps the natural codes


@needs_nvcc
@pytest.mark.parametrize("source", launcher.SOURCES, ids=lambda p: p.name)
def test_no_kernel_reads_global_memory_before_the_pdl_wait(source, tmp_path, monkeypatch):
    """With programmatic dependent launch a kernel may start while the kernel ahead still runs
    (it may be the prepare that wrote the weight), so nothing but parameters and L2 prefetches
    may come before griddepcontrol.wait, in every kernel the library compiles (sm_90a PTX, in
    program order: the waits sit in straight-line prologues)."""
    monkeypatch.setenv(jit.ENV_CACHE, str(tmp_path))
    ptx = jit.build("fp4_trtllm_pdl_check", [source], arch="sm_90a", kind="ptx", flags=list(launcher.FLAGS),
                    progress=False).read_text()
    early = global_access_before_pdl_wait(ptx)
    assert early, "no kernels in the PTX"
    for name, lines in early.items():
        assert lines is not None, f"{name}: no griddepcontrol.wait"
        assert not lines, f"{name}: global memory touched before the PDL wait: {lines[:3]}"


def _c_struct_fields(source: str, struct: str) -> list[str]:
    body = source.split(f"struct {struct} {{", 1)[1].split("};", 1)[0]
    fields = []
    for line in body.splitlines():
        decl = line.split("//", 1)[0].strip().rstrip(";")
        if decl:
            fields += [part.strip().lstrip("*").split()[-1].lstrip("*") for part in decl.split(",")]
    return fields


@pytest.mark.parametrize("struct,mirror,source", [
    ("Fp4SplitKParams", launcher._SplitKParams, launcher.SOURCES[1]),
    ("Fp4GemvParams", launcher._Params, launcher.SOURCES[0])])
def test_param_blocks_mirror_the_c_structs(struct, mirror, source):
    """The ctypes parameter blocks name the C structs' fields in the same order (a field added
    on one side only would shift every later one)."""
    assert [name for name, _ in mirror._fields_] == _c_struct_fields(source.read_text(), struct)


def test_fused_quantization_launcher_refuses_what_it_cannot_run():
    """Checked before the library is touched: M past one 32-row activation pass, FP4 or
    float32 activations."""
    kw = dict(w=None, w_sf=None, n=2880, k=1024, t=2, warps=4, splits=1, out_fp16=False,
              device=torch.device("cuda", 0))
    with pytest.raises(ValueError, match="m <= 32, got m=33"):
        launcher.bind_fused_quant(m=33, act_dtype=torch.bfloat16, **kw)
    with pytest.raises(ValueError, match="bf16 or fp16 activations, got torch.float32"):
        launcher.bind_fused_quant(m=7, act_dtype=torch.float32, **kw)
