"""Build (through ``fp4core.kit.jit``), load and launch the Hopper kernel; its cached workspaces.

The SM90 library has one launch entry point, ``fp4c_sm90_gemm(const Params*, stream)``: the
activation pre-pass, the GEMM and (for split-K) the reduction, all on the given stream with
raw device pointers, so nothing here touches torch's C++ ABI. Every launch passes
``fp4core.kit.pdl.enabled`` (programmatic dependent launch, SM90+) in ``Params.pdl``.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from fp4core import kit
from fp4core.kit import jit, pdl

CSRC = Path(__file__).parent / "csrc"
SM90_SOURCE = CSRC / "fp4_sm90_gemm.cu"
SM90_LIB = "fp4_cutlass_sm90"
ABI_VERSION = 5  # 4: Params.a_plain (weight-only calls); 5: Params.pdl
#: K values per pipeline stage; the pre-pass pads A's K to a multiple of it.
BK = 128
#: Activation rows per CTA (wgmma N) and weight rows per CTA the library is compiled for.
TM_CHOICES = (16, 32, 64, 128, 256)
BN_CHOICES = (128, 64)
#: (tm, bn) tiles the library does not build: no deadlock-free pipeline fits their shared memory
#: (bn = 64 needs 4 stages; tm = 256 fits 2 and hung on an H100, 2026-12-06; Smem::kFits).
UNBUILT_TILES = ((256, 64),)
#: CTAs per thread-block cluster along N; 2 multicasts each activation tile to both CTAs.
CLUSTER_CHOICES = (2, 1)
#: Largest tm with the "deep" variant (3 register fragment buffers must fit beside the accumulators).
DEEP_MAX_TM = 128
#: Extra nvcc flags (part of the cache key).
FLAGS = ("-lineinfo",)


class Params(ctypes.Structure):
    """Mirrors ``struct fp4c::Params`` in csrc/fp4_sm90_gemm.cu."""

    _fields_ = [(name, ctypes.c_void_p) for name in
                ("a", "a_sf", "b", "b_sf", "alpha", "out", "act", "partial")] + \
               [(name, ctypes.c_int) for name in
                ("m", "n", "k", "a_sf_8x4", "out_fp16", "mx", "splits", "tm", "bn", "cluster", "deep", "a_plain", "pdl")]


def include_dirs() -> list[Path]:
    """The CUTLASS/CuTe include folder; raises a clear error when nvidia-cutlass is missing."""
    inc = jit.cutlass_include_dir()
    if inc is None:
        raise jit.JitError("CUTLASS/CuTe headers not found: pip install nvidia-cutlass "
                           f"(or set ${jit.ENV_CUTLASS} to a folder holding cutlass/cutlass.h)")
    return [inc]


def build_sm90(progress: bool = True, kind: str = "shared") -> Path:
    """Compile the SM90a library (or find it in the JIT cache); returns its path."""
    return jit.build(SM90_LIB, [SM90_SOURCE], arch="sm_90a", flags=FLAGS, include_dirs=include_dirs(),
                     progress=progress, kind=kind)


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL:
    """The loaded SM90a library (built on first use)."""
    lib = jit.load(SM90_LIB, [SM90_SOURCE], arch="sm_90a", flags=FLAGS, include_dirs=include_dirs())
    lib.fp4c_sm90_gemm.restype = ctypes.c_int
    lib.fp4c_sm90_gemm.argtypes = [ctypes.POINTER(Params), ctypes.c_void_p]
    lib.fp4c_error_string.restype = ctypes.c_char_p
    lib.fp4c_error_string.argtypes = [ctypes.c_int]
    lib.fp4c_abi_version.restype = ctypes.c_int
    lib.fp4c_params_size.restype = ctypes.c_int
    if lib.fp4c_abi_version() != ABI_VERSION:
        raise RuntimeError(f"{SM90_LIB}: library ABI {lib.fp4c_abi_version()} != {ABI_VERSION}")
    if lib.fp4c_params_size() != ctypes.sizeof(Params):
        raise RuntimeError(f"{SM90_LIB}: Params is {lib.fp4c_params_size()} bytes in C, "
                           f"{ctypes.sizeof(Params)} in Python")
    return lib


def padded_k(k: int) -> int:
    return (k + BK - 1) // BK * BK


def workspace_pointers(device: torch.device, act_elems: int, partial_elems: int) -> tuple[int, int]:
    """Pointers to the device's bf16 K-permuted activations (at least ``act_elems``) and
    split-K fp32 partials (at least ``partial_elems``; 0 when none: no split), from the core's
    grow-only device buffers (valid across CUDA-graph capture)."""
    bufs = kit.device_buffers(device)
    act = bufs.get("cutlass.act", act_elems, torch.bfloat16, minimum=1 << 20)
    if not partial_elems:
        return act.data_ptr(), 0
    return act.data_ptr(), bufs.get("cutlass.partial", partial_elems, torch.float32, minimum=1 << 18).data_ptr()


def _check_aligned(name: str, t: torch.Tensor) -> None:
    if t.data_ptr() % 16:
        raise ValueError(f"cutlass: {name} must start at a 16-byte aligned address (TMA), "
                         f"got {t.data_ptr():#x}")


def _launch_failed(lib, err: int, what: str) -> RuntimeError:
    return RuntimeError(f"fp4-cutlass kernel launch failed: error {err} ({lib.fp4c_error_string(err).decode()}) "
                        f"for {what}")


def _what(m, n, k, tm, bn, splits, cluster, deep) -> str:
    return f"m={m} n={n} k={k} tm={tm} bn={bn} splits={splits} cluster={cluster} deep={deep}"


def bind(*, b: torch.Tensor, b_sf: torch.Tensor, m: int, n: int, k: int, mx: bool, a_sf_8x4: bool,
         plain: bool, out_fp16: bool, tm: int, bn: int, splits: int, cluster: int = 1, deep: bool = False):
    """``launch(a, a_sf, alpha, out)`` for repeated calls of one shape and tactic (``Fp4Linear``'s
    per-M plans): the weight checks, the workspace and the parameter block are done once, a
    call fills in four pointers and launches. Arguments as for ``launch``; ``plain`` marks a
    weight-only plan (a: contiguous (m, k) bfloat16, a_sf None). The workspace pointers stay
    valid: the core's device buffers only grow and keep the buffers they replaced."""
    index = b.device.index if b.device.index is not None else torch.cuda.current_device()
    lib = library()
    _check_aligned("b (the weight)", b)
    _check_aligned("b_descale", b_sf)
    act, part = workspace_pointers(b.device, m * padded_k(k), splits * m * n if splits > 1 else 0)
    p = Params(None, None, b.data_ptr(), b_sf.data_ptr(), None, None, act, part or None,
               m, n, k, int(a_sf_8x4), int(out_fp16), int(mx), splits, tm, bn, cluster, int(deep), int(plain))
    ref, fn, raw_stream, current = ctypes.byref(p), lib.fp4c_sm90_gemm, kit.raw_stream, torch.cuda.current_device
    pdl_on = pdl.enabled
    what = _what(m, n, k, tm, bn, splits, cluster, deep)

    def launch_bound(a, a_sf, alpha, out):
        if plain:
            if not a.is_contiguous():
                raise ValueError("cutlass: a weight-only call needs a contiguous bfloat16 activation")
            p.a_sf = None
        else:
            if a.data_ptr() % 16:
                _check_aligned("a", a)
            p.a_sf = a_sf.data_ptr()
        p.a, p.out = a.data_ptr(), out.data_ptr()
        p.alpha = alpha.data_ptr() if alpha is not None else None
        p.pdl = pdl_on(index)
        if index == current():
            err = fn(ref, raw_stream(index))
        else:  # the runtime launches on the current device: make it the weight's
            with torch.cuda.device(index):
                err = fn(ref, raw_stream(index))
        if err:
            raise _launch_failed(lib, err, what)
    return launch_bound


def launch(*, a: torch.Tensor, a_sf: torch.Tensor | None, b: torch.Tensor, b_sf: torch.Tensor,
           alpha: torch.Tensor | None, out: torch.Tensor, m: int, n: int, k: int, mx: bool,
           a_sf_8x4: bool, tm: int, bn: int, splits: int, cluster: int = 1, deep: bool = False) -> None:
    """Run pre-pass + GEMM (+ split-K reduce) on the current stream of ``out``'s device.

    Args:
        a: uint8 (m, k/2) contiguous; a_sf: flat A scale bytes (128x4, or 8x4 if ``a_sf_8x4``).
            A weight-only call passes a as the (m, k) bfloat16 activation, contiguous, and
            a_sf None: the pre-pass then only permutes it.
        b: uint8 (n, k/2) contiguous; b_sf: flat 128x4 B scale bytes.
        alpha: float32 one element or None; out: contiguous (m, n) bf16 or fp16.
        tm, bn, splits, cluster: the tactic (activation rows per CTA, weight rows per CTA,
            split-K, CTAs per cluster sharing the activation tile by TMA multicast, two wgmma
            batches in flight per warpgroup (tm <= 128 only)).
    Raises:
        ValueError for a misaligned tensor; RuntimeError naming the CUDA error of a failed launch.
    """
    plain = a_sf is None
    if plain and (a.dtype != torch.bfloat16 or not a.is_contiguous()):
        raise ValueError(f"cutlass: a weight-only call needs a contiguous bfloat16 activation, got {a.dtype}")
    index = out.device.index
    lib = library()
    if not plain:
        _check_aligned("a", a)
    _check_aligned("b (the weight)", b)
    _check_aligned("b_descale", b_sf)
    act, part = workspace_pointers(out.device, m * padded_k(k), splits * m * n if splits > 1 else 0)
    p = Params(a.data_ptr(), None if plain else a_sf.data_ptr(), b.data_ptr(), b_sf.data_ptr(),
               alpha.data_ptr() if alpha is not None else None, out.data_ptr(), act, part or None,
               m, n, k, int(a_sf_8x4), int(out.dtype == torch.float16), int(mx), splits, tm, bn, cluster,
               int(deep), int(plain), int(pdl.enabled(index)))
    if index == torch.cuda.current_device():
        err = lib.fp4c_sm90_gemm(ctypes.byref(p), kit.raw_stream(index))
    else:  # the runtime launches on the current device: make it out's device
        with torch.cuda.device(index):
            err = lib.fp4c_sm90_gemm(ctypes.byref(p), kit.raw_stream(index))
    if err != 0:
        raise _launch_failed(lib, err, _what(m, n, k, tm, bn, splits, cluster, deep))
