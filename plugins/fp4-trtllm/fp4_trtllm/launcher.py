"""Build (through ``fp4core.kit.jit``), load and launch the CUDA kernel; the split-K workspace.

The library's C entry points take raw device pointers and the current stream, so nothing here
touches torch's C++ ABI: ``fp4_trtllm_gemv(const Fp4GemvParams*, mx, t, nt, grid, stream)``
launches the stream-K kernel, ``fp4_trtllm_occupancy(mx, t, nt, warps)`` says how many of its
CTAs fit on one SM, ``fp4_trtllm_splitk(const Fp4SplitKParams*, mx, t, nt, ring, stream)`` launches
the split-K kernel (register pipeline, or a shared-memory cp.async ring) (the first kernel of this plugin, kept as a tactic
family: it is the faster one for some decode shapes).

Every launch asks ``fp4core.kit.pdl.enabled`` whether to use programmatic dependent launch
(SM90+; the kernels prefetch or wait as ``fp4core/pdl.cuh`` says) and passes it in the params.

The kernel is a persistent stream-K grid: the work (activation block, group of W*T weight
tiles, 64-wide K chunk) is cut into ``grid`` equal contiguous ranges, one per CTA, with grid =
SMs x CTAs per SM (at most the number of units).
"""

from __future__ import annotations

import ctypes
import functools
import math
from pathlib import Path

import torch

from fp4core import kit
from fp4core.kit import jit, pdl

SOURCE = Path(__file__).parent / "csrc" / "fp4_gemv.cu"
#: Both kernels, linked into one library: stream-K (fp4_gemv.cu) and split-K (fp4_splitk.cu).
SOURCES = (SOURCE, Path(__file__).parent / "csrc" / "fp4_splitk.cu")
LIB_NAME = "fp4_trtllm_gemv"
ABI_VERSION = 9  # 4: NVFP4 weights word-encoded (wordcode.py); 5: tiles in groups of 16; 6: W4A16 entry;
# 7: weight-only NVFP4 weights in the bf16 word code; 8: the params' pdl field; 9: fused quantization
#: The W4A16 kernels' activation codes (fp4_trtllm_splitk_w16's ``act``), by torch dtype.
ACT_CODES = {torch.bfloat16: 1, torch.float16: 2}
#: The fused-quantization kernels' activation codes (fp4_trtllm_splitk_fused_quant's ``act``).
FUSED_QUANT_ACT_CODES = {torch.bfloat16: 3, torch.float16: 4}
#: Largest M of the fused-quantization kernels (activation passes of up to 4 tiles of 8 rows;
#: the 8-tile variant would spill).
FUSED_QUANT_MAX_M = 32
#: nvcc flags of the library (the build hook and ``library`` must agree: same JIT cache key).
FLAGS = ("-lineinfo",)
#: Activation rows per CTA pass, by the kernel's template parameter NT (8 rows per MMA tile).
NT_CHOICES = (1, 2, 4, 8)


class _Params(ctypes.Structure):
    # Mirrors struct Fp4GemvParams in csrc/fp4_gemv.cu.
    _fields_ = [(name, ctypes.c_void_p) for name in
                ("a", "a_sf", "b", "b_sf", "alpha", "out", "ws", "counters")] + \
               [(name, ctypes.c_int) for name in
                ("m", "n", "k", "a_sf_8x4", "a_sf_col_tiles", "out_fp16", "warps", "m_tiles",
                 "groups", "mblocks", "pdl")]


class _SplitKParams(ctypes.Structure):
    # Mirrors struct Fp4SplitKParams in csrc/fp4_splitk.cu.
    _fields_ = [(name, ctypes.c_void_p) for name in
                ("a", "a_sf", "b", "b_sf", "alpha", "out", "ws", "counters")] + \
               [(name, ctypes.c_int) for name in
                ("m", "n", "k", "a_sf_8x4", "a_sf_col_tiles", "out_fp16", "splits", "warps", "m_tiles",
                 "pdl")] + [("w_gs", ctypes.c_void_p), ("a_gs", ctypes.c_void_p)]


# the nvcc target of a device (kept here by name: tests and the build hook use it)
arch_for = kit.arch_for


@functools.lru_cache(maxsize=None)
def library(arch: str) -> ctypes.CDLL:
    """The compiled kernel library for ``arch`` (built on first use, then from the cache)."""
    lib = jit.load(LIB_NAME, list(SOURCES), arch=arch, flags=list(FLAGS))
    lib.fp4_trtllm_gemv.restype = ctypes.c_int
    lib.fp4_trtllm_gemv.argtypes = [ctypes.POINTER(_Params), ctypes.c_int, ctypes.c_int,
                                    ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.fp4_trtllm_splitk.restype = ctypes.c_int
    lib.fp4_trtllm_splitk.argtypes = [ctypes.POINTER(_SplitKParams), ctypes.c_int, ctypes.c_int,
                                      ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.fp4_trtllm_splitk_w16.restype = ctypes.c_int
    lib.fp4_trtllm_splitk_w16.argtypes = [ctypes.POINTER(_SplitKParams), ctypes.c_int, ctypes.c_int,
                                          ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.fp4_trtllm_splitk_fused_quant.restype = ctypes.c_int
    lib.fp4_trtllm_splitk_fused_quant.argtypes = [ctypes.POINTER(_SplitKParams), ctypes.c_int, ctypes.c_int,
                                                  ctypes.c_int, ctypes.c_void_p]
    lib.fp4_trtllm_occupancy.restype = ctypes.c_int
    lib.fp4_trtllm_occupancy.argtypes = [ctypes.c_int] * 4
    lib.fp4_trtllm_error_string.restype = ctypes.c_char_p
    lib.fp4_trtllm_error_string.argtypes = [ctypes.c_int]
    lib.fp4_trtllm_abi_version.restype = ctypes.c_int
    if lib.fp4_trtllm_abi_version() != ABI_VERSION:
        raise RuntimeError(f"{LIB_NAME}: library ABI {lib.fp4_trtllm_abi_version()} != {ABI_VERSION}")
    return lib


def launch_error(lib: ctypes.CDLL, err: int, kernel: str, what: str) -> RuntimeError:
    """The error of a failed launch: the kernel, the CUDA error by number and name, the call."""
    return RuntimeError(f"fp4-trtllm {kernel} launch failed: CUDA error {err} "
                        f"({lib.fp4_trtllm_error_string(err).decode()}) for {what}")


def nt_for(m: int) -> int:
    """Activation tiles of 8 rows per CTA pass: the fewest that cover m, at most 8 (64 rows)."""
    for nt in NT_CHOICES:
        if m <= 8 * nt:
            return nt
    return NT_CHOICES[-1]


def _check_alignment_w16(a_ptr: int) -> None:
    """The W4A16 kernel copies activation rows in 16-byte pieces."""
    if a_ptr % 16:
        raise ValueError(f"fp4-trtllm: a (bf16/fp16 activations) must start 16-byte aligned, got address "
                         f"{a_ptr:#x}; pass a contiguous tensor")


def _check_alignment(a_ptr: int, a_sf_ptr: int, stream_k: bool) -> None:
    """The kernels read A with 8-byte loads and (stream-K) A's scales with 4-byte cp.async:
    an input at an odd offset would fault ("misaligned address"), so it is refused here."""
    if a_ptr % 8 or (stream_k and a_sf_ptr % 4):
        raise ValueError(f"fp4-trtllm: A must start 8-byte aligned and its scales 4-byte aligned "
                         f"(got addresses {a_ptr:#x}, {a_sf_ptr:#x}); pass contiguous tensors")


def workspace_pointers(device: torch.device, floats: int, counters: int) -> tuple[int, int]:
    """Pointers to the device's stream-K/split-K partials (at least ``floats`` float32) and
    arrival counters (at least ``counters`` int32, zero between launches: the kernels leave
    them so), from the core's grow-only device buffers (valid across CUDA-graph capture)."""
    bufs = kit.device_buffers(device)
    partials = bufs.get("trtllm.partials", floats, torch.float32, minimum=1 << 20)
    flags = bufs.get("trtllm.counters", counters, torch.int32, minimum=1 << 14, zeroed=True)
    return partials.data_ptr(), flags.data_ptr()


@functools.lru_cache(maxsize=None)
def _device_lib(index: int) -> ctypes.CDLL:
    return library(arch_for(torch.cuda.get_device_capability(index)))


@functools.lru_cache(maxsize=None)
def _occupancy(index: int, mx: bool, t: int, nt: int, warps: int) -> int:
    n = _device_lib(index).fp4_trtllm_occupancy(int(mx), t, nt, warps)
    if n < 1:
        raise RuntimeError(f"fp4-trtllm: no CTA of t={t} nt={nt} warps={warps} fits on an SM of "
                           f"device {index} (occupancy query returned {n})")
    return n


def geometry(m: int, n: int, k: int, t: int, warps: int) -> tuple[int, int, int, int]:
    """(nt, groups, mblocks, units) of a launch: activation tiles per pass, groups of
    ``warps * t`` weight tiles, activation passes, and work units (mblocks * groups * k/64)."""
    nt = nt_for(m)
    groups = math.ceil(math.ceil(n / 16) / (warps * t))
    mblocks = math.ceil(m / (8 * nt))
    return nt, groups, mblocks, mblocks * groups * (k // 64)


@functools.lru_cache(maxsize=4096)
def _plan(index: int, m: int, n: int, k: int, mx: bool, t: int, warps: int, ctas: int
          ) -> tuple[int, int, int, int, int, int]:
    """(nt, groups, mblocks, grid, workspace floats, counters) for one call shape."""
    nt, groups, mblocks, units = geometry(m, n, k, t, warps)
    per_sm = _occupancy(index, mx, t, nt, warps)
    if ctas > 0:
        per_sm = min(per_sm, ctas)
    grid = max(1, min(units, kit.sm_count(index) * per_sm))
    return nt, groups, mblocks, grid, grid * 2 * warps * t * nt * 32 * 4, mblocks * groups


def launch(*, a: torch.Tensor, a_sf: torch.Tensor, w: torch.Tensor, w_sf: torch.Tensor,
           alpha: torch.Tensor | None, out: torch.Tensor, m: int, n: int, k: int, mx: bool,
           a_sf_8x4: bool, a_sf_cols: int, t: int, warps: int, ctas: int = 0) -> None:
    """Launch the kernel on the current stream of ``out``'s device.

    Args:
        a: uint8 (m, k/2) contiguous; a_sf: flat A scale bytes (128x4 or 8x4, ``a_sf_8x4``).
        w, w_sf: the prepared weight and scales (``layout.prepare_weight``).
        alpha: float32 one element or None; out: contiguous (m, n) bf16 or fp16.
        a_sf_cols: padded scale columns of A (multiple of 4).
        t, warps: the tactic's tiles of 16 rows per warp and warps per CTA.
        ctas: CTAs per SM of the persistent grid (0: as many as fit).
    Raises:
        RuntimeError naming the CUDA error if the launch fails.
    """
    index = out.device.index
    lib = _device_lib(index)
    nt, groups, mblocks, grid, ws_floats, n_counters = _plan(index, m, n, k, mx, t, warps, ctas)
    ws, cnt = workspace_pointers(out.device, ws_floats, n_counters)
    _check_alignment(a.data_ptr(), a_sf.data_ptr(), True)
    p = _Params(a.data_ptr(), a_sf.data_ptr(), w.data_ptr(), w_sf.data_ptr(),
                alpha.data_ptr() if alpha is not None else None, out.data_ptr(), ws, cnt,
                m, n, k, int(a_sf_8x4), a_sf_cols // 4, int(out.dtype == torch.float16),
                warps, (n + 15) // 16, groups, mblocks, int(pdl.enabled(index)))
    err = lib.fp4_trtllm_gemv(ctypes.byref(p), int(mx), t, nt, grid, kit.raw_stream(index))
    if err != 0:
        raise launch_error(lib, err, "kernel",
                           f"m={m} n={n} k={k} t={t} warps={warps} ctas={ctas} grid={grid}")


def splitk_grid(m: int, n: int, t: int, warps: int, splits: int) -> tuple[int, int, int]:
    """(CTAs along N, splits, activation passes) of a split-K launch."""
    m_tiles = math.ceil(n / 16)
    return math.ceil(m_tiles / (warps * t)), splits, math.ceil(m / (8 * nt_for(m)))


def _splitk_workspace(device: torch.device, m: int, n: int, t: int, warps: int, splits: int
                      ) -> tuple[int | None, int | None]:
    """(partials, counters) pointers of a split-K launch; (None, None) without a split."""
    if splits <= 1:
        return None, None
    gx, _, gz = splitk_grid(m, n, t, warps, splits)
    return workspace_pointers(device, gx * splits * gz * warps * t * nt_for(m) * 128, gx * gz)


def launch_splitk(*, a: torch.Tensor, a_sf: torch.Tensor | None, w: torch.Tensor, w_sf: torch.Tensor,
                  alpha: torch.Tensor | None, out: torch.Tensor, m: int, n: int, k: int, mx: bool,
                  a_sf_8x4: bool, a_sf_cols: int, t: int, warps: int, splits: int,
                  ring: bool = False, act: int = 0) -> None:
    """Launch the split-K kernel (same arguments as ``launch``; ``splits`` CTAs share each tile
    of rows, the last to arrive sums their partials in split order). ``ring``: stream the
    chunks through a per-warp shared-memory ring filled by ``cp.async`` instead of the
    register pipeline (falls back to the register pipeline when ``a_sf`` is not 4-byte
    aligned, which the ring's 4-byte scale copies need).

    ``act`` (``ACT_CODES``): 0 for FP4 activations; 1 or 2 for a weight-only call, where ``a``
    is the contiguous (m, k) bf16 or fp16 activation, ``a_sf`` is None and the ring is always
    used (``fp4_trtllm_splitk_w16``)."""
    index = out.device.index
    lib = _device_lib(index)
    nt = nt_for(m)
    m_tiles = (n + 15) // 16
    ws, cnt = _splitk_workspace(out.device, m, n, t, warps, splits)
    if act:
        _check_alignment_w16(a.data_ptr())
    else:
        _check_alignment(a.data_ptr(), a_sf.data_ptr(), False)
    p = _SplitKParams(a.data_ptr(), a_sf.data_ptr() if a_sf is not None else None, w.data_ptr(), w_sf.data_ptr(),
                      alpha.data_ptr() if alpha is not None else None, out.data_ptr(), ws, cnt,
                      m, n, k, int(a_sf_8x4), a_sf_cols // 4, int(out.dtype == torch.float16),
                      splits, warps, m_tiles, int(pdl.enabled(index)))
    if act:
        err = lib.fp4_trtllm_splitk_w16(ctypes.byref(p), int(mx), act, t, nt, kit.raw_stream(index))
    else:
        ring = bool(ring) and a_sf.data_ptr() % 4 == 0
        err = lib.fp4_trtllm_splitk(ctypes.byref(p), int(mx), t, nt, int(ring), kit.raw_stream(index))
    if err != 0:
        raise launch_error(lib, err, "split-K kernel",
                           f"m={m} n={n} k={k} t={t} warps={warps} splits={splits} ring={ring}")


def bind(*, w: torch.Tensor, w_sf: torch.Tensor, m: int, n: int, k: int, mx: bool, a_sf_8x4: bool,
         a_sf_cols: int, t: int, warps: int, out_fp16: bool, device: torch.device, splitk: bool,
         splits: int = 1, ring: bool = False, ctas: int = 0, act: int = 0):
    """``launch(a, a_sf, alpha, out)`` for repeated calls of one shape and tactic: the plan, the
    workspace and the parameter block are made once, a call fills in four pointers and
    launches (``launch`` / ``launch_splitk`` do all of it on every call). The workspace pointers
    stay valid: the workspace only grows and keeps the buffers it replaced. ``act``: as for
    ``launch_splitk`` (weight-only calls: split-K ring only, ``a_sf`` None)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    lib = _device_lib(index)
    raw_stream, pdl_on = kit.raw_stream, pdl.enabled  # locals: the closures below run per call
    if splitk:
        nt = nt_for(m)
        ws, cnt = _splitk_workspace(device, m, n, t, warps, splits)
        p = _SplitKParams(None, None, w.data_ptr(), w_sf.data_ptr(), None, None, ws, cnt, m, n, k,
                          int(a_sf_8x4), a_sf_cols // 4, int(out_fp16), splits, warps, (n + 15) // 16)
        fn, ref, mode = lib.fp4_trtllm_splitk, ctypes.byref(p), int(mx)
        what = f"split-K m={m} n={n} k={k} t={t} warps={warps} splits={splits}"
        if act:
            fn16 = lib.fp4_trtllm_splitk_w16

            def launch_w16(a, a_sf, alpha, out):
                p.a, p.out = a.data_ptr(), out.data_ptr()
                if p.a % 16:
                    _check_alignment_w16(p.a)
                p.alpha = alpha.data_ptr() if alpha is not None else None
                p.pdl = pdl_on(index)
                err = fn16(ref, mode, act, t, nt, raw_stream(index))
                if err:
                    raise launch_error(lib, err, "W4A16 kernel", what)
            return launch_w16

        def launch(a, a_sf, alpha, out):
            p.a, p.a_sf, p.out = a.data_ptr(), a_sf.data_ptr(), out.data_ptr()
            if p.a % 8:
                _check_alignment(p.a, p.a_sf, False)
            p.alpha = alpha.data_ptr() if alpha is not None else None
            p.pdl = pdl_on(index)
            err = fn(ref, mode, t, nt, int(ring and p.a_sf % 4 == 0), raw_stream(index))
            if err:
                raise launch_error(lib, err, "kernel", what)
        return launch
    nt, groups, mblocks, grid, ws_floats, n_counters = _plan(index, m, n, k, mx, t, warps, ctas)
    ws, cnt = workspace_pointers(device, ws_floats, n_counters)
    p = _Params(None, None, w.data_ptr(), w_sf.data_ptr(), None, None, ws, cnt, m, n, k, int(a_sf_8x4),
                a_sf_cols // 4, int(out_fp16), warps, (n + 15) // 16, groups, mblocks)
    fn, ref, mode = lib.fp4_trtllm_gemv, ctypes.byref(p), int(mx)
    what = f"stream-K m={m} n={n} k={k} t={t} warps={warps} ctas={ctas} grid={grid}"

    def launch(a, a_sf, alpha, out):
        p.a, p.a_sf, p.out = a.data_ptr(), a_sf.data_ptr(), out.data_ptr()
        if p.a % 8 or p.a_sf % 4:
            _check_alignment(p.a, p.a_sf, True)
        p.alpha = alpha.data_ptr() if alpha is not None else None
        p.pdl = pdl_on(index)
        err = fn(ref, mode, t, nt, grid, raw_stream(index))
        if err:
            raise launch_error(lib, err, "kernel", what)
    return launch


def bind_fused_quant(*, w: torch.Tensor, w_sf: torch.Tensor, m: int, n: int, k: int, t: int, warps: int,
                     splits: int, act_dtype: torch.dtype, out_fp16: bool, device: torch.device):
    """``launch(x, global_scale, weight_global_scale, alpha, out)``: NVFP4 quantization of the
    activations and the split-K ring GEMM in one kernel, for repeated calls of one shape and tactic.

    ``x`` is the contiguous (m, k) bf16/fp16 activation (16-byte aligned), ``out`` (m, n)
    bf16/fp16; ``w``/``w_sf`` the NVFP4 weight as ``layout.prepare_weight`` makes it for FP4
    activations (the f16 word code). Static scale: ``global_scale`` and ``alpha`` float32 (1,),
    ``weight_global_scale`` None. Dynamic: ``global_scale`` and ``alpha`` None,
    ``weight_global_scale`` the weight's float32 (1,) global scale; every CTA then takes the
    input's maximum itself, so it is meant for small inputs (decode batches). The result is
    bit-identical to ``ActivationQuantizer`` with the same scale arguments followed by the
    split-K ring tactic (t, warps, splits). m <= ``FUSED_QUANT_MAX_M``."""
    if m > FUSED_QUANT_MAX_M:
        raise ValueError(f"fp4-trtllm: fused quantization takes m <= {FUSED_QUANT_MAX_M}, got m={m}")
    act = FUSED_QUANT_ACT_CODES.get(act_dtype)
    if act is None:
        raise ValueError(f"fp4-trtllm: fused quantization takes bf16 or fp16 activations, got {act_dtype}")
    index = device.index if device.index is not None else torch.cuda.current_device()
    lib = _device_lib(index)
    raw_stream, pdl_on = kit.raw_stream, pdl.enabled
    nt = nt_for(m)
    ws, cnt = _splitk_workspace(device, m, n, t, warps, splits)
    p = _SplitKParams(None, None, w.data_ptr(), w_sf.data_ptr(), None, None, ws, cnt, m, n, k,
                      0, 0, int(out_fp16), splits, warps, (n + 15) // 16)
    fn, ref = lib.fp4_trtllm_splitk_fused_quant, ctypes.byref(p)
    what = f"fused-quantization split-K m={m} n={n} k={k} t={t} warps={warps} splits={splits}"

    def launch(x, global_scale, weight_global_scale, alpha, out):
        p.a, p.out = x.data_ptr(), out.data_ptr()
        p.a_gs = global_scale.data_ptr() if global_scale is not None else None
        p.w_gs = weight_global_scale.data_ptr() if weight_global_scale is not None else None
        p.alpha = alpha.data_ptr() if alpha is not None else None
        if p.a % 16:
            _check_alignment_w16(p.a)
        if not x.is_contiguous():  # the kernel reads rows m * k elements apart
            raise ValueError(f"fp4-trtllm: fused quantization needs a contiguous (m, k) input, got strides "
                             f"{tuple(x.stride())}")
        p.pdl = pdl_on(index)
        err = fn(ref, act, t, nt, raw_stream(index))
        if err:
            raise launch_error(lib, err, "fused-quantization kernel", what)
    return launch
