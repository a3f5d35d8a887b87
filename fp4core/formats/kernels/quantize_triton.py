"""Triton kernels: NVFP4 / MXFP4 quantization that writes swizzled scales directly.

Byte-for-byte the recipe of ``fp4core.formats.quantize`` (the CPU reference), in float32:

* NVFP4, per block of 16: ``s = E4M3(min(amax * gs / 6, 448))`` (RNE), codes
  ``E2M1(x * (gs / s))`` (0 multiplier for a zero scale). ``/`` is IEEE division
  (``div_rn``; Triton's default ``/`` is approximate), the E4M3 rounding is done on the bits
  so it does not depend on the hardware's FP8 conversion.
* MXFP4, per block of 32: ``s = 2^ceil(log2(amax / 6))`` as E8M0, codes ``E2M1(x / s)``
  (multiplying by the exact reciprocal power of two, which rounds identically).
* A block holding NaN/Inf gets the NaN scale byte (0x7F / 0xFF) and zero codes; a
  non-finite global scale marks every block.
* ``global_scale="auto"``: ``gs = 2688 * (1 / amax)`` over the finite values of ``|x|``
  (``compute_global_scale``; NaN and Inf only mark their own blocks), from a first pass in
  which each program writes the maximum of its tiles; every program of the quantization
  pass reduces those few partial maxima itself, so the pair is two launches. An input of at
  most ``ONE_PASS_MAX_ELEMS`` elements (a decode batch) takes one launch instead: each
  program of the quantization pass reads the whole input for its maximum (a few KB from L2),
  which costs less than a kernel boundary. Both give the same bits (a maximum does not depend
  on the order it is taken in).

Each program quantizes a tile of ``BM`` rows x ``BC`` scale blocks and writes its codes and
its scale bytes at their swizzled offsets (128x4, 8x4 or linear), zeros in the padding, so
the scale tensor needs no separate swizzle pass and no zero fill.

Programmatic dependent launch (``fp4core.kit.pdl``, SM90+): when it is on, both kernels are
compiled with ``USE_GDC`` and launched with ``launch_pdl``: a kernel may then start while the
kernel ahead of it (say, the previous layer's GEMM, which reads the buffers an
``ActivationQuantizer`` reuses) drains, and waits for it before its first load.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from fp4core import kit
from fp4core.kit import pdl
from fp4core.formats.fp4 import Fp4Format
from fp4core.formats.layouts import SfLayout, padded_scale_shape
from fp4core.formats.kernels import fast_launch
from fp4core.formats.kernels.fast_launch import FastKernel

_LAYOUT_ID = {SfLayout.layout_linear: 0, SfLayout.layout_128x4: 1, SfLayout.layout_8x4: 2}


@triton.jit
def _partial_amax_kernel(x_ptr, stride_xm, M, K, part_ptr, TILES_K, TILES,
                         BM: tl.constexpr, BK: tl.constexpr, USE_GDC: tl.constexpr):
    # Each program folds the tiles pid, pid + P, ... into a running maximum and writes it to
    # part_ptr[pid]: no atomics and no zero-filled buffer (one launch fewer). Programs advance
    # together, so the tensor's last tiles are read last: the quantization pass walks the
    # tensor backwards and finds them still in L2.
    if USE_GDC:  # launched with PDL: x may still be being written by the kernel ahead
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    pid = tl.program_id(0)
    acc = tl.zeros([BM, BK], dtype=tl.float32)
    for t in range(pid, TILES, tl.num_programs(0)):
        rows = (t // TILES_K) * BM + tl.arange(0, BM)
        cols = (t % TILES_K) * BK + tl.arange(0, BK)
        mask = (rows < M)[:, None] & (cols < K)[None, :]
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + cols[None, :], mask=mask, other=0.0)
        a = tl.abs(x.to(tl.float32))
        # finite values only: a NaN or Inf must not move the scale of every other block
        acc = tl.maximum(acc, tl.where(a < float("inf"), a, 0.0))
    tl.store(part_ptr + pid, tl.max(tl.max(acc, axis=1), axis=0))


@triton.jit
def _e4m3_byte(v):
    """Non-negative float32 (<= 448) -> E4M3 byte, round to nearest even, subnormals kept."""
    bits = v.to(tl.int32, bitcast=True)
    normal = (bits + 0x7FFFF + ((bits >> 20) & 1)) >> 20  # RNE to 3 mantissa bits
    sub = (v * 512.0 + 8388608.0) - 8388608.0  # RNE(v / 2^-9) for v < 2^-6
    return tl.where(v < 0.015625, sub.to(tl.int32), normal - 960)


@triton.jit
def _e4m3_value(b):
    """E4M3 byte (0..0x7E, int32) -> float32 (exact)."""
    e = b >> 3
    m = b & 7
    normal = ((e + 120) << 23 | (m << 20)).to(tl.float32, bitcast=True)
    return tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)


@triton.jit
def _e2m1_magnitude(q):
    """E2M1 magnitude code (0..7, round to nearest even, saturating at 6) of ``|q|``, in the
    low byte of the result (the upper bytes are not zero: callers keep only the low byte).

    The E2M1 values 0, .5, 1, 1.5, 2, 3, 4, 6 are where the concave piecewise-linear
    ``f(a) = min(2a, a + 2, a / 2 + 4)`` takes the codes 0..7, and midpoints map to
    half-integers, so the code is ``rint(f(a)) = min(rint(2a), rint(a) + 2, rint(a/2) + 4)``
    (rint is monotone), with ties to even code = ties to even mantissa. Each rint is one
    exact float add of 2^23 (whose ulp is 1), so the code is the low byte of the float bits.
    Float adds and multiplies run on the FMA pipe; the integer/logic (ALU) pipe is what
    limited the previous bit-twiddling version (ncu on H200: ALU 84 % busy)."""
    a = tl.minimum(tl.abs(q), 6.0)
    y1 = (a * 2.0 + 8388608.0).to(tl.int32, bitcast=True)
    y2 = (a + 8388610.0).to(tl.int32, bitcast=True)
    y3 = (a * 0.5 + 8388612.0).to(tl.int32, bitcast=True)
    # positive floats order like their bits: one three-way integer min
    return tl.minimum(tl.minimum(y1, y2), y3)


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _load_pairs(xp_ptr, offs, mask, IN_KIND: tl.constexpr):
    """Elements 2i and 2i+1 of each pair as float32, and their two sign bits at bits 15 and
    31 of an int32. The input is read as one integer per pair (int32 for bf16/fp16, int64 for
    fp32), so each thread holds whole pairs and the nibble packing needs no data exchange
    between threads."""
    w = tl.load(xp_ptr + offs, mask=mask, other=0)
    if IN_KIND == 0:  # float32 pairs in an int64
        lo_b = w.to(tl.int32)
        hi_b = (w >> 32).to(tl.int32)
        lo = lo_b.to(tl.float32, bitcast=True)
        hi = hi_b.to(tl.float32, bitcast=True)
        sign_bits = ((lo_b >> 16) & 0x8000) | (hi_b & -0x80000000)
    elif IN_KIND == 1:  # bfloat16: the upper half of a float32
        lo_b = w << 16
        hi_b = w & -65536
        lo = lo_b.to(tl.float32, bitcast=True)
        hi = hi_b.to(tl.float32, bitcast=True)
        sign_bits = w & -0x7FFF8000  # 0x80008000: the two bf16 sign bits in place
    else:  # float16
        lo = w.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        hi = (w >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        sign_bits = w & -0x7FFF8000  # 0x80008000: the two fp16 sign bits in place
    return lo, hi, sign_bits


@triton.jit
def _whole_amax(xp_ptr, stride_pm, M, KP, IN_KIND: tl.constexpr, CHUNK: tl.constexpr):
    # The finite maximum of |x| over all M x 2*KP elements, CHUNK pairs per step over the
    # flattened (row, pair) index, so a one-row decode input uses every lane.
    acc = tl.zeros([CHUNK], dtype=tl.float32)
    total = M * KP
    for start in range(0, total, CHUNK):
        i = start + tl.arange(0, CHUNK)
        row = i // KP
        lo, hi, _ = _load_pairs(xp_ptr, row.to(tl.int64) * stride_pm + (i - row * KP), i < total, IN_KIND)
        # each element filtered on its own: a NaN beside a finite value must not hide it
        lo = tl.abs(lo)
        hi = tl.abs(hi)
        acc = tl.maximum(acc, tl.maximum(tl.where(lo < float("inf"), lo, 0.0), tl.where(hi < float("inf"), hi, 0.0)))
    return tl.max(acc, axis=0)


@triton.jit
def _quant_kernel(xp_ptr, stride_pm, q_ptr, sf_ptr, gs_ptr, gs_out_ptr, wgs_ptr, alpha_ptr, NPART,
                  M, KP, NB, PROWS, PCOL, PROGS_C,
                  IN_KIND: tl.constexpr, IS_NV: tl.constexpr, BLOCK: tl.constexpr,
                  LAYOUT: tl.constexpr, GS_MODE: tl.constexpr, ALPHA: tl.constexpr,
                  PART: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr, USE_GDC: tl.constexpr):
    # GS_MODE: 0 none (MXFP4), 1 gs_ptr holds the float32 global scale, 2 gs_ptr holds NPART
    # partial maxima of |x| (``_partial_amax_kernel``) and the global scale is derived here
    # (programs run in reverse order then, to meet the amax pass's last tiles in L2), 3 every
    # program takes the maximum of the whole (small) input itself: no amax launch.
    # ALPHA: program 0 also writes the GEMM's alpha = 1 / (gs * gs_w), gs_w at wgs_ptr.
    # A program owns BM rows x BC scale blocks, laid out as BM * BC block rows of BLOCK / 2
    # pairs: the block reductions stay inside a thread or a pair of threads, and the codes
    # and scales are computed once per element and once per block (no broadcast copies).
    HALF: tl.constexpr = BLOCK // 2
    NBLK: tl.constexpr = BM * BC
    if USE_GDC:  # launched with PDL: wait before reading x or the partial maxima, or writing
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    pid = tl.program_id(0)
    if GS_MODE == 2:
        pid = tl.num_programs(0) - 1 - pid
    pid_m = pid // PROGS_C
    pid_c = pid % PROGS_C
    blk = tl.arange(0, NBLK)
    r = pid_m * BM + blk // BC           # row of each block
    c = pid_c * BC + blk % BC            # scale-block column of each block
    pc = c[:, None] * HALF + tl.arange(0, HALF)[None, :]  # pair (= output byte) column
    live = (r < M) & (c < NB)
    mask = live[:, None]
    lo, hi, sign_bits = _load_pairs(xp_ptr, r[:, None].to(tl.int64) * stride_pm + pc, mask, IN_KIND)
    # |x| maxima with NaN propagated (one FMNMX.NAN per pair), so a block holding an Inf
    # or a NaN ends with an amax whose bits are >= those of Inf
    amax = tl.reduce(tl.maximum(tl.abs(lo), tl.abs(hi), propagate_nan=tl.PropagateNan.ALL), 1, _max_nan)
    bad = amax.to(tl.int32, bitcast=True) >= 0x7F800000
    if IS_NV:
        if GS_MODE == 2:
            parts = tl.arange(0, PART)
            am = tl.max(tl.load(gs_ptr + parts, mask=parts < NPART, other=0.0), axis=0)
            gs = tl.where(am > 0, tl.math.div_rn(1.0, am) * 2688.0, 1.0)
            if pid == 0:
                tl.store(gs_out_ptr, gs)
        elif GS_MODE == 3:
            am = 0.0
            if pid_m * BM < M:  # programs that only write scale padding need no scale
                am = _whole_amax(xp_ptr, stride_pm, M, KP, IN_KIND, 4096)
            gs = tl.where(am > 0, tl.math.div_rn(1.0, am) * 2688.0, 1.0)
            if pid == 0:
                tl.store(gs_out_ptr, gs)
        else:
            gs = tl.load(gs_ptr)
        if ALPHA:
            if pid == 0:
                tl.store(alpha_ptr, tl.math.div_rn(1.0, gs * tl.load(wgs_ptr)))
        gs = gs + tl.zeros_like(amax)  # broadcast once: the block math below is elementwise
        scale_f = tl.where(amax > 0, tl.math.div_rn(amax * gs, 6.0), 0.0)
        scale_f = tl.minimum(scale_f, 448.0)
        sbyte = _e4m3_byte(scale_f)
        scale_v = _e4m3_value(sbyte)
        mult = tl.where(scale_v > 0, tl.math.div_rn(gs, scale_v), 0.0)
        bad = bad | (gs != gs) | (tl.abs(gs) == float("inf"))
        nan_byte = 0x7F
    else:
        v = tl.math.div_rn(amax, 6.0)
        bits = v.to(tl.int32, bitcast=True)
        ex = (bits >> 23) & 0xFF
        man = bits & 0x7FFFFF
        biased = tl.where(ex > 0, ex + (man != 0).to(tl.int32), (man > 0x400000).to(tl.int32))
        biased = tl.minimum(biased, 254)
        sbyte = tl.where(v > 0, biased, 0)
        # 1 / 2^(b-127) = 2^(127-b): biased exponent 254-b, the subnormal 2^-127 for b = 254
        mult = tl.where(sbyte == 254, 0x400000, (254 - sbyte) << 23).to(tl.float32, bitcast=True)
        nan_byte = 0xFF
    m2 = mult[:, None]
    # codes of the pair in one byte: low byte of (hi << 4) + lo (carries only run upwards),
    # signs from the inputs (mult >= 0 keeps every sign, zeros included)
    packed = ((_e2m1_magnitude(hi * m2) << 4) + _e2m1_magnitude(lo * m2)) | (sign_bits >> 12) | (sign_bits >> 24)
    packed = tl.where(bad[:, None], 0, packed).to(tl.uint8)
    sbyte = tl.where(bad, nan_byte, sbyte)
    tl.store(q_ptr + r[:, None].to(tl.int64) * KP + pc, packed, mask=mask)
    # scale bytes, padding included (zero), at their layout offsets
    sval = tl.where(live, sbyte, 0).to(tl.uint8)
    if LAYOUT == 0:
        off = r.to(tl.int64) * PCOL + c
    elif LAYOUT == 1:
        tile = (r // 128).to(tl.int64) * (PCOL // 4) + c // 4
        off = tile * 512 + (r % 32) * 16 + ((r // 32) % 4) * 4 + c % 4
    else:
        tile = (r // 8).to(tl.int64) * (PCOL // 4) + c // 4
        off = tile * 32 + (r % 8) * 4 + c % 4
    tl.store(sf_ptr + off, sval, mask=(r < PROWS) & (c < PCOL))


#: (rows, scale blocks) per program and warps, per format: 2 blocks per thread, within 1 %
#: (NVFP4) and 3 % (MXFP4) of the fastest tile of ``bench_quant.sweep_configs`` on an H200
#: (2026-12-01, 8192 x 8192 bf16). FP4CORE_QUANT_TILES overrides them
#: ("nvfp4=16,16,4;mxfp4=16,16,4").
DEFAULT_CONFIG = {Fp4Format.NVFP4: (16, 16, 4), Fp4Format.MXFP4: (16, 16, 4)}


def _tiles_from_env() -> None:
    import os
    for item in filter(None, os.environ.get("FP4CORE_QUANT_TILES", "").split(";")):
        fmt, _, cfg = item.partition("=")
        DEFAULT_CONFIG[Fp4Format(fmt.strip())] = tuple(int(v) for v in cfg.split(","))


_tiles_from_env()


#: the largest input (rows x K elements) that a dynamic NVFP4 quantization handles in one
#: launch, each program reading the whole input for its maximum first: at most two dependent
#: steps of 4096 pairs (32 KB of bf16, from L2) per program, well under the cost of a kernel
#: boundary; more steps would put their L2 latencies in every program's path. Not yet timed
#: on a GPU. FP4CORE_QUANT_ONE_PASS_MAX overrides it (0: always two launches).
ONE_PASS_MAX_ELEMS = 1 << 14


def _one_pass_from_env() -> None:
    import os
    global ONE_PASS_MAX_ELEMS
    raw = os.environ.get("FP4CORE_QUANT_ONE_PASS_MAX", "").strip()
    if raw:
        try:
            ONE_PASS_MAX_ELEMS = int(raw)
        except ValueError:
            raise ValueError(f"FP4CORE_QUANT_ONE_PASS_MAX={raw!r}: expected a whole number of elements "
                             f"(0 turns the one-launch dynamic quantization off)") from None


_one_pass_from_env()


_PAIR_DTYPE = {torch.float32: (torch.int64, 0), torch.bfloat16: (torch.int32, 1), torch.float16: (torch.int32, 2)}


def _as_pairs(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` viewed as one integer per pair of elements (a copy only for odd row strides or
    offsets, which a zero-copy view cannot express; ``contiguous()`` would keep a contiguous
    view's odd offset)."""
    if x.dtype not in _PAIR_DTYPE:
        raise TypeError(f"fp4core quantization kernels take float32, bfloat16 or float16 input, got {x.dtype}")
    pair_dtype, kind = _PAIR_DTYPE[x.dtype]
    if x.stride(1) != 1 or x.stride(0) % 2 or x.storage_offset() % 2:
        x = x.clone(memory_format=torch.contiguous_format)
    return x.view(pair_dtype), kind


def _amax_programs(x: torch.Tensor, tiles: int) -> int:
    sms = kit.sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device()) \
        if x.is_cuda else 4
    return max(1, min(tiles, 2 * sms))


def _pow2(n: int) -> int:
    """The smallest power of two >= max(n, 1)."""
    return 1 << max(n - 1, 0).bit_length()


_fast_amax = FastKernel(_partial_amax_kernel)
_fast_quant = FastKernel(_quant_kernel)


def _plan(x: torch.Tensor, fmt: Fp4Format, layout: SfLayout, global_scale: torch.Tensor | None,
          auto_global_scale: bool, weight_global_scale: torch.Tensor | None,
          config: tuple[int, int, int] | None, buffers: tuple | None = None):
    """The launches of one quantization and its outputs, without launching.

    Returns ``(launches, (q, sf, gs_out, alpha))`` with launches a list of
    ``(FastKernel, programs, args, constexprs)``; ``buffers`` = (q, sf, scratch) to write into
    instead of fresh allocations. ``x`` has unit stride along K.
    """
    rows, k = x.shape
    block = fmt.block_size
    nb = k // block
    prow, pcol = padded_scale_shape(rows, nb, layout)
    bm, bc, warps = config or DEFAULT_CONFIG[fmt]
    nv = fmt is Fp4Format.NVFP4
    want_alpha = weight_global_scale is not None
    auto = nv and auto_global_scale
    # Plain integer arithmetic: triton.cdiv is a constexpr function (microseconds per call).
    abm, abk = 32, 256
    tiles_k = -(-k // abk)
    tiles = -(-rows // abm) * tiles_k
    one_pass = auto and rows * k <= ONE_PASS_MAX_ELEMS
    npart = _amax_programs(x, tiles) if auto and not one_pass and rows and k else 0
    if buffers is None:
        dev = x.device
        q = torch.empty((rows, k // 2), dtype=torch.uint8, device=dev)
        sf = torch.empty((prow, pcol), dtype=torch.uint8, device=dev)
        # one float32 scratch allocation: [global scale, alpha, 2 unused, partial maxima...],
        # so the global scale (an output of the torch op) and the partials are 16-byte aligned
        scratch = torch.empty(4 + npart, dtype=torch.float32, device=dev)
    else:
        q, sf, scratch = buffers
    alpha = scratch[1:2] if want_alpha else None
    gdc = x.is_cuda and pdl.enabled(x.device.index)
    launches = []
    if auto:
        gs_out = scratch[:1]
        # the partial maxima; one pass reads none, and gets a pointer inside the scratch (an
        # empty slice would point past its end, which a bound quantizer cannot keep)
        gs_in = scratch[4:4 + npart] if npart else gs_out
        if npart:
            launches.append((_fast_amax, npart, (x, x.stride(0), rows, k, gs_in, tiles_k, tiles),
                             dict(BM=abm, BK=abk, USE_GDC=gdc, num_warps=4, launch_pdl=gdc)))
        mode = 3 if one_pass else 2
    elif nv:
        gs_in = gs_out = global_scale.reshape(1).to(torch.float32)
        mode = 1
    else:
        gs_in = gs_out = scratch[:1]  # unused by the kernel; ``quantize`` fills in the 1
        mode = 0
    if prow and pcol:
        xp, in_kind = _as_pairs(x)
        progs_m, progs_c = -(-prow // bm), -(-pcol // bc)
        launches.append((_fast_quant, progs_m * progs_c,
                         (xp, xp.stride(0), q, sf, gs_in, gs_out,
                          weight_global_scale if want_alpha else gs_out, alpha if want_alpha else gs_out,
                          max(npart, 1), rows, k // 2, nb, prow, pcol, progs_c),
                         dict(IN_KIND=in_kind, IS_NV=nv, BLOCK=block, LAYOUT=_LAYOUT_ID[layout], GS_MODE=mode,
                              ALPHA=want_alpha, PART=_pow2(npart), BM=bm, BC=bc, USE_GDC=gdc, num_warps=warps,
                              launch_pdl=gdc)))
    return launches, (q, sf, gs_out, alpha)


def _launch(x: torch.Tensor, fmt: Fp4Format, layout: SfLayout, global_scale: torch.Tensor | None,
            auto_global_scale: bool, weight_global_scale: torch.Tensor | None,
            config: tuple[int, int, int] | None, buffers: tuple | None = None):
    if x.stride(1) != 1:
        x = x.contiguous()
    launches, (q, sf, gs_out, alpha) = _plan(x, fmt, layout, global_scale, auto_global_scale,
                                             weight_global_scale, config, buffers)
    for fast, programs, args, constexprs in launches:
        fast((programs,), *args, **constexprs)
    if not launches or launches[-1][0] is not _fast_quant:  # no rows: the scalars still have to be right
        if auto_global_scale and fmt is Fp4Format.NVFP4:
            gs_out.fill_(1.0)
        if alpha is not None:
            torch.reciprocal(gs_out * weight_global_scale, out=alpha)
    return q, sf, gs_out, alpha


#: the largest input (rows x K elements) whose quantized copy an ActivationQuantizer keeps
#: between calls (1.5 MiB of codes and scales at the limit): host time matters for small
#: batches, and a large batch's GPU time hides it.
REUSE_MAX_ELEMS = 1 << 22


_UNBINDABLE = ("unbindable",)  # a _bound key no call matches: every call takes the generic path


class ActivationQuantizer:
    """``quantize_activation`` for repeated calls with one input shape, dtype and row stride
    (an ``Fp4Linear`` eager plan holds one per batch size).

    After the first call it launches the compiled kernels directly with integer pointers
    into buffers it owns (codes, scales, global scale, alpha): no allocation and no Triton
    argument handling per call, a few microseconds instead of tens on a slow host CPU. The
    buffers are reused on the stream of the first call, which orders every reuse after the
    previous GEMM read them; on another stream, under CUDA-graph capture, with a profiler's
    launch hook, for a misaligned or differently shaped input, or above ``REUSE_MAX_ELEMS``,
    a call takes ``quantize_activation`` (fresh outputs) instead.

    Call as ``quantizer(x, global_scale, weight_global_scale)`` with the arguments of
    ``quantize_activation`` (global_scale None: dynamic; weight_global_scale None: no alpha;
    the first call's choice is the one bound); returns (x_fp4 uint8 (rows, K/2), flat x_sf uint8, alpha float32
    (1,) or None). The returned tensors are overwritten by the next call on the same stream.
    """

    def __init__(self, fmt: Fp4Format, layout: SfLayout, config: tuple[int, int, int] | None = None):
        self.fmt, self.layout, self.config = fmt, layout, config
        # (shape, stride, dtype, device, stream, static scale?, alpha?, PDL?) of the bound launches
        self._bound: tuple | None = None
        self._launches: list = []  # (CompiledLaunch, programs, template args, slots)
        self._outputs: tuple | None = None
        self._keep: tuple = ()

    def _generic(self, x, gs, wgs):
        q, sf, alpha = quantize_activation(x, self.fmt, self.layout, gs, wgs, self.config)
        return q, sf.view(-1), alpha

    def _bind(self, x: torch.Tensor, gs, wgs, key: tuple):
        """First call: quantize into owned buffers through FastKernel (compiling if needed),
        then keep each launch as a compiled kernel with integer arguments. ``slots`` marks the
        positions that take a per-call pointer (the input, the static or weight scale)."""
        auto = self.fmt is Fp4Format.NVFP4 and gs is None
        launches, outputs = _plan(x, self.fmt, self.layout, gs, auto, wgs, self.config)
        for fast, programs, args, constexprs in launches:
            fast((programs,), *args, **constexprs)
        by_ptr = {x.data_ptr(): "x"}
        if gs is not None:
            by_ptr.setdefault(gs.data_ptr(), "gs")
        if wgs is not None:
            by_ptr.setdefault(wgs.data_ptr(), "wgs")
        # every other pointer must name memory the quantizer keeps (its outputs' storage): a
        # temporary (e.g. a contiguous copy of x) would be freed after this call
        kept = [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
                for t in outputs if isinstance(t, torch.Tensor)]
        bound = []
        for fast, programs, args, constexprs in launches:
            compiled = fast.compiled(args, constexprs)
            if compiled is None:
                return outputs
            template, slots = [], []
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor):
                    ptr = a.data_ptr()
                    if ptr in by_ptr:
                        slots.append((i, by_ptr[ptr]))
                    elif not any(base <= ptr < base + size for base, size in kept):
                        self._bound = _UNBINDABLE
                        return outputs
                    template.append(ptr)
                else:
                    template.append(a)
            bound.append((compiled, programs, template, tuple(slots)))
        self._launches = bound
        # the outputs' storage (codes, scales, scratch) is what the integer pointers name
        self._outputs = (outputs[0], outputs[1].view(-1), outputs[3])
        self._keep = outputs
        self._bound = key
        return outputs

    def __call__(self, x: torch.Tensor, global_scale: torch.Tensor | None,
                 weight_global_scale: torch.Tensor | None):
        nv = self.fmt is Fp4Format.NVFP4
        gs = global_scale if nv else None
        wgs = weight_global_scale if nv else None
        if (not 0 < x.numel() <= REUSE_MAX_ELEMS or not x.is_cuda or x.data_ptr() % 16
                or (gs is not None and (gs.dtype != torch.float32 or gs.numel() != 1))
                or torch._C._cuda_isCurrentStreamCapturing() or fast_launch._hooked()):
            return self._generic(x, gs, wgs)
        device = x.device.index
        stream = torch._C._cuda_getCurrentRawStream(device)
        key = (x.shape, x.stride(), x.dtype, device, stream, gs is None, wgs is None, pdl.enabled(device))
        if self._bound is None:
            if x.stride(1) != 1 or x.stride(0) % 2:  # the kernels would read a temporary copy
                return self._generic(x, gs, wgs)
            q, sf, _, alpha = self._bind(x, gs, wgs, key)
            return q, sf.view(-1), alpha
        if self._bound != key:
            return self._generic(x, gs, wgs)
        ptrs = {"x": x.data_ptr()}
        if gs is not None:
            ptrs["gs"] = gs.data_ptr()
        if wgs is not None:
            ptrs["wgs"] = wgs.data_ptr()
        for compiled, programs, template, slots in self._launches:
            args = list(template)
            for i, name in slots:
                args[i] = ptrs[name]
            compiled(programs, stream, *args)
        return self._outputs


def quantize(x: torch.Tensor, fmt: Fp4Format, layout: SfLayout, global_scale: torch.Tensor | None,
             auto_global_scale: bool, config: tuple[int, int, int] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize a 2-D CUDA tensor; see the module docstring. One launch, or two with
    ``auto_global_scale`` above ``ONE_PASS_MAX_ELEMS`` elements (partial maxima, then the
    quantization pass reduces them).

    Args:
        x: (rows, K) float32/float16/bfloat16 with unit stride along K; K a multiple of the
            format's block (checked by the caller).
        fmt, layout: format and scale layout of the result.
        global_scale: NVFP4 float32 tensor with one element (ignored when
            ``auto_global_scale``; None for MXFP4).
        auto_global_scale: NVFP4 only: compute the global scale from ``x`` (its finite values).
        config: (rows per program, scale blocks per program, warps), powers of two.
    Returns:
        (x_fp4 uint8 (rows, K/2), x_sf uint8 (padded_rows, padded_K/block) in ``layout``
        order, global scale float32 (1,): the one used, ones for MXFP4).
    """
    q, sf, gs, _ = _launch(x, fmt, layout, global_scale, auto_global_scale, None, config)
    if fmt is Fp4Format.MXFP4:
        gs.fill_(1.0)
    return q, sf, gs


def quantize_activation(x: torch.Tensor, fmt: Fp4Format, layout: SfLayout,
                        global_scale: torch.Tensor | None, weight_global_scale: torch.Tensor | None,
                        config: tuple[int, int, int] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize a layer's input and compute the GEMM's alpha on the device, in the launches of
    ``quantize`` (no extra kernel for alpha).

    Args:
        x: (rows, K) float32/float16/bfloat16, unit stride along K.
        fmt, layout: format and scale layout.
        global_scale: NVFP4: a float32 (1,) tensor (a static, calibrated scale: one launch) or
            None (from ``x``'s amax: two launches, one up to ``ONE_PASS_MAX_ELEMS``
            elements). Ignored for MXFP4.
        weight_global_scale: NVFP4: the weight's float32 (1,) global scale; alpha is then
            ``1 / (gs_x * gs_w)``, bit-equal to that torch expression. None: no alpha.
    Returns:
        (x_fp4 uint8 (rows, K/2), x_sf uint8 scales in ``layout`` order, alpha float32 (1,)
        or None (MXFP4, or no weight_global_scale)).
    """
    nv = fmt is Fp4Format.NVFP4
    q, sf, _, alpha = _launch(x, fmt, layout, global_scale, nv and global_scale is None,
                              weight_global_scale if nv else None, config)
    return q, sf, alpha
