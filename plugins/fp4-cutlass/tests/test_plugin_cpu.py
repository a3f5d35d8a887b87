"""CPU checks: the package installs and registers through its entry point, supports gives
clear reasons, tactics are valid JSON-able variants, errors name the bad argument, and the
K permutation used by the kernel is a bijection that matches the fragment mapping."""

import json
from importlib.metadata import entry_points

import pytest

import fp4core
from fp4core.dispatch.problem import DeviceInfo

from fp4_cutlass import launcher, plugin
from fp4_cutlass.plugin import CutlassBackend, CutlassTactic

H100 = DeviceInfo("cuda", 0, "NVIDIA H100 80GB HBM3", (9, 0))
B200 = DeviceInfo("cuda", 0, "NVIDIA B200", (10, 0))
RTX5090 = DeviceInfo("cuda", 0, "NVIDIA GeForce RTX 5090", (12, 0))
A100 = DeviceInfo("cuda", 0, "NVIDIA A100", (8, 0))


def _p(m, n, k, device=H100, **kw):
    return fp4core.make_problem(m, n, k, device=device, **kw)


def test_entry_point_registered():
    eps = [ep for ep in entry_points(group="fp4core.backends") if ep.name == "cutlass"]
    assert len(eps) == 1 and eps[0].value == "fp4_cutlass.plugin:CutlassBackend"
    names = {b.name: b for b in fp4core.backends()}
    assert "cutlass" in names
    info = CutlassBackend().backend_info()
    assert info.verified == ("sm90a",) and set(info.targets) == {"sm90a", "sm100a", "sm120a"}


def test_supports_reasons(monkeypatch):
    monkeypatch.setattr(plugin, "_toolchain_problem", lambda: "")
    be = CutlassBackend()
    assert be.supports(_p(128, 4096, 4096))
    assert be.supports(_p(1, 100, 64, use_nvfp4=False))
    r = be.supports(_p(128, 4096, 4000))
    assert not r and "multiple of 64" in r.reason and "4000" in r.reason
    r = be.supports(_p(128, 4096, 4096, device=B200))
    assert not r and "not verified on hardware" in r.reason
    r = be.supports(_p(128, 4096, 4096, device=RTX5090))
    assert not r and "not verified on hardware" in r.reason
    r = be.supports(_p(128, 4096, 4096, device=A100))
    assert not r and "SM90" in r.reason
    r = be.supports(_p(128, 4096, 4096, device="cpu"))
    assert not r and "CUDA" in r.reason


def test_supports_without_toolchain(monkeypatch):
    monkeypatch.setattr(plugin, "_toolchain_problem", lambda: "nvcc (CUDA compiler) not found")
    r = CutlassBackend().supports(_p(128, 4096, 4096))
    assert not r and "nvcc" in r.reason


@pytest.mark.parametrize("m", [1, 7, 128, 256, 1000, 4096])
def test_tactics_valid(m):
    be = CutlassBackend()
    tacs = be.tactics(_p(m, 8192, 8192))
    assert tacs and all(type(t) is CutlassTactic for t in tacs)
    assert [CutlassTactic.from_json(json.loads(json.dumps(t.to_json()))) for t in tacs] == tacs
    for t in tacs:
        assert t.tm in launcher.TM_CHOICES and t.bn in launcher.BN_CHOICES and t.split_k >= 1
        assert t.cluster in launcher.CLUSTER_CHOICES
        assert t.deep in (0, 1) and not (t.deep and t.tm > launcher.DEEP_MAX_TM)
        assert t.label() == f"bn={t.bn},cluster={t.cluster},deep={t.deep},split_k={t.split_k},tm={t.tm}"
    assert len(set(tacs)) == len(tacs)


def test_tactic_defaults_and_old_cache_json():
    # a JSON dict of earlier versions (as tuning caches hold it) reads back as before
    old = {"tm": 128, "bn": 64, "split_k": 2, "cluster": 2, "deep": 1}
    assert CutlassTactic.from_json(old) == CutlassTactic(tm=128, bn=64, split_k=2, cluster=2, deep=1)
    assert CutlassTactic.from_json({}) == CutlassTactic(tm=None, bn=128, split_k=0, cluster=1, deep=0)
    assert CutlassTactic().label() == "bn=128,cluster=1,deep=0,split_k=0"


def test_split_k_fills_the_gpu():
    # 128 x 8192 x 8192 with 128x128 tiles is 64 CTAs on 132 SMs: split K in two.
    assert plugin.auto_splits(_p(128, 8192, 8192), 128, 128) == 2
    assert plugin.auto_splits(_p(4096, 8192, 8192), 256, 128) == 1


def test_bad_tactic_names_the_field():
    with pytest.raises(ValueError, match="tm must be one of"):
        CutlassBackend().run(_p(8, 256, 256), None, CutlassTactic(tm=48, bn=128), None)
    with pytest.raises(ValueError, match="deep=1 needs tm <= 128"):
        CutlassBackend().run(_p(8, 256, 256), None, CutlassTactic(tm=256, bn=128, deep=1), None)


def _phys(l):
    # Mirror of phys_of_logical() in csrc/fp4_sm90_gemm.cu.
    return 32 * ((l % 8) // 2) + 8 * ((l // 16) // 2) + 2 * ((l // 16) % 2) + (l % 16) // 8 + 4 * (l % 2)


def test_k_permutation_matches_fragment_mapping():
    perm = [_phys(l) for l in range(128)]
    assert sorted(perm) == list(range(128))
    # Thread quad q, word i of its 16 weight bytes, code pair j -> (wgmma k-step, register, half).
    for q in range(4):
        for i in range(4):
            for j in range(4):
                for half in range(2):
                    phys = 32 * q + 8 * i + j + 4 * half       # nibble j (+4 for the high half)
                    s, p = 2 * i + j // 2, j % 2                 # k-step and a0/a2 register
                    logical = 16 * s + 8 * p + 2 * q + half      # wgmma column inside the k-step
                    assert perm[logical] == phys


def test_decode_word_emulation():
    """The bit trick of decode_word: raw bf16 * 2^126 is the E2M1 value, for every code pair."""
    from fp4core.formats.fp4 import E2M1_VALUES
    import struct

    def bf16_bits_to_float(b):
        return struct.unpack("<f", struct.pack("<I", b << 16))[0]
    for x in [0x76543210, 0xFEDCBA98, 0x0F1E2D3C, 0x89ABCDEF]:
        m32 = 0xFFFFFFFF
        x &= m32
        r = [((x << 6) & 0x01C001C0) | ((x << 12) & 0x80008000),
             ((x << 2) & 0x01C001C0) | ((x << 8) & 0x80008000),
             ((x >> 2) & 0x01C001C0) | ((x << 4) & 0x80008000),
             ((x >> 6) & 0x01C001C0) | (x & 0x80008000)]
        for j in range(4):
            for half in range(2):
                code = (x >> (4 * (j + 4 * half))) & 0xF
                bits = (r[j] >> (16 * half)) & 0xFFFF
                assert bf16_bits_to_float(bits) * 2.0**126 == E2M1_VALUES[code]


def test_untuned_order_on_hopper_follows_the_measured_sweep():
    """Untuned, auto tries backends by priority: cutlass must outrank the other installed
    plain-weight backends in every regime on SM90, and trtllm (prepared weights) keep the
    decode lead (tuned H100 sweep of 2026-11-25 in docs/benchmarks.md)."""
    infos = {b.name: b.info for b in fp4core.dispatch.selector.selector.registry.backends()}
    h100 = DeviceInfo("cuda", 0, "hypothetical H100", (9, 0))
    for m in (1, 16, 64, 128, 1024, 4096):
        p = fp4core.make_problem(m, 8192, 8192, device=h100)
        mine = infos["cutlass"].priority_for(p)
        for name, info in infos.items():
            if name not in ("cutlass", "trtllm"):
                assert mine > info.priority_for(p), (m, name)
        if m <= 16 and "trtllm" in infos:
            assert infos["trtllm"].priority_for(p) > mine


@pytest.mark.parametrize("m", [1, 100, 129, 300, 2048, 8192])
@pytest.mark.parametrize("n", [320, 1024, 8192, 28672])
def test_unbuilt_tile_is_never_offered_and_refused_by_name(m, n):
    """tm=256 with bn=64 deadlocked on an H100 (2 pipeline stages; bn=64 needs 4): tactics()
    never lists it, and run() refuses it by name before anything launches."""
    p = fp4core.make_problem(m, n, 8192, device=H100)
    assert all((t.tm, t.bn) not in launcher.UNBUILT_TILES for t in CutlassBackend().tactics(p))
    with pytest.raises(ValueError, match="tm=256 with bn=64 is not built"):
        CutlassBackend().run(p, fp4core.Operands(None, None, None, None), CutlassTactic(tm=256, bn=64), None)


def _act_permute(a: "np.ndarray", k: int) -> "np.ndarray":
    """Mirror of act_permute_kernel (csrc/fp4_sm90_gemm.cu): (m, k) -> (m, kp) by its own
    index math (thread g = 2s + p of chunk c, word q, half h), zeros past K."""
    import numpy as np
    m, kp = a.shape[0], launcher.padded_k(k)
    out = np.zeros((m, kp), dtype=a.dtype)
    for c in range(kp // 128):
        kvalid = min(128, k - 128 * c)
        for g in range(16):
            s, pp = g >> 1, g & 1
            off = 8 * (s >> 1) + 2 * (s & 1) + pp
            for q in range(4):
                if q * 32 < kvalid:
                    for h in range(2):
                        out[:, 128 * c + 8 * g + 2 * q + h] = a[:, 128 * c + 32 * q + off + 4 * h]
    return out


@pytest.mark.parametrize("k", [128, 192, 1088])
def test_weight_only_prepass_permutes_like_the_fragment_mapping(k):
    """The W4A16 pre-pass puts A's physical K position perm[l] at logical column l of each
    128-wide chunk, the permutation the weight fragments use (so the products pair up), and
    zeros past K; a kernel that copied in natural order would fail this."""
    import numpy as np
    a = np.random.default_rng(k).standard_normal((3, k)).astype(np.float32)
    got = _act_permute(a, k)
    perm = [_phys(l) for l in range(128)]
    for c in range(launcher.padded_k(k) // 128):
        for l in range(128):
            src = 128 * c + perm[l]
            want = a[:, src] if src < k else 0.0
            assert np.array_equal(got[:, 128 * c + l], np.broadcast_to(want, (3,))), (c, l)
    assert not np.array_equal(got[:, :128], a[:, :128])  # not the identity


def test_weight_only_activations_priority_and_refusals():
    """bf16 activations are listed and lead the untuned decode order of weight-only problems
    (not of W4A4 ones); fp16 activations are refused (bf16 wgmma); a weight-only launch with a
    non-bf16 activation is refused."""
    import torch
    info = CutlassBackend().backend_info()
    assert info.activations == ("fp4", "bf16")
    w4a16 = fp4core.make_problem(16, 256, 256, device=H100, act_dtype=torch.bfloat16)
    w4a4 = fp4core.make_problem(16, 256, 256, device=H100)
    assert info.priority_for(w4a16) == 55 and info.priority_for(w4a4) == 45
    p16 = fp4core.make_problem(8, 256, 256, device=H100, act_dtype=torch.float16)
    assert "bfloat16 activations" in CutlassBackend().supports(p16).reason
    a = torch.zeros(8, 256, dtype=torch.float16)
    with pytest.raises(ValueError, match="contiguous bfloat16 activation"):
        launcher.launch(a=a, a_sf=None, b=None, b_sf=None, alpha=None, out=torch.empty(8, 256),
                        m=8, n=256, k=256, mx=False, a_sf_8x4=False, tm=16, bn=128, splits=1)


def test_bind_checks_the_tactic_like_run():
    """The bound launcher (Fp4Linear's plans) refuses what run refuses, before any GPU work."""
    with pytest.raises(ValueError, match="tm must be one of"):
        CutlassBackend().bind(_p(8, 256, 256), None, CutlassTactic(tm=48, bn=128))
    with pytest.raises(ValueError, match="is not built"):
        CutlassBackend().bind(_p(8, 256, 256), None, CutlassTactic(tm=256, bn=64))
