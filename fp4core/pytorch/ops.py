"""fp4core as ``torch.library`` custom ops, for ``torch.compile`` and CUDA graphs.

Two ops, each with a fake (meta) implementation so ``torch.compile(fullgraph=True)`` traces
through them without graph breaks:

* ``torch.ops.fp4core.mm_fp4(a, a_descale, b, b_descale, alpha, out_dtype, use_nvfp4,
  use_8x4_sf_layout, backend, weight_key) -> out``: the GEMM. ``b`` is the weight row-major
  (N, K/2) (FlashInfer's ``b_fp4``, not its ``.T``), ``b_descale`` its 128x4 scale bytes
  (any contiguous shape). ``weight_key`` names a prepared weight registered with
  ``register_prepared`` (or -1): a ``PreparedWeight`` holds Python objects (each backend's
  own layout) that no op schema can carry, so the op takes the canonical tensors (they
  give the graph its data dependency and the fake shapes) plus that integer key.
* ``torch.ops.fp4core.quantize_fp4(x, fmt, sf_layout, global_scale, auto_global_scale)
  -> (x_fp4, x_sf, global_scale)``: activation quantization (Triton on CUDA, the torch
  reference elsewhere).
* ``torch.ops.fp4core.linear_fp4(x, weight_fp4, weight_scale, weight_global_scale,
  input_global_scale, static_alpha, fmt, sf_layout, static_scale, out_dtype, backend,
  layer_key) -> (M, N)``: a whole ``Fp4Linear`` GEMM (quantize + mm, no bias), what
  ``torch.compile`` traces for the layer. ``layer_key`` names the layer's
  ``fp4core.pytorch.linear_plan.LayerPlans`` (``register_layer``), so the compiled model runs the
  eager path's cached per-M plans (bound quantizer, bound launcher) instead of two ops that
  each validate and dispatch; without Triton, or with an unknown key, it composes the two
  ops above.

The real implementation of ``mm_fp4`` is ``fp4core.mm_fp4``: the backend comes from the
selector (tuned/cached choice, else the heuristic). The selector never tunes while the
current stream is capturing a CUDA graph, and a prepared weight whose tensors changed is not
re-prepared during capture either (the canonical weight is used instead).

Use ``fp4core.pytorch.ops.mm_fp4`` (FlashInfer's signature, PreparedWeight accepted) or
``fp4core.quantize_fp4``; ``fp4core.pytorch.nn.Fp4Linear`` wraps both.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from typing import Optional

import torch

from fp4core import api
from fp4core.formats.fp4 import Fp4Format, as_bytes
from fp4core.formats.layouts import SfLayout, flat_scale_bytes, padded_scale_shape
from fp4core.dispatch.prepared import PreparedWeight, prepare
from fp4core.formats.quantize import check_global_scale, compute_global_scale, mxfp4_quantize, nvfp4_quantize
from fp4core.dispatch.validation import check_format

log = logging.getLogger("fp4core")

_NO_WEIGHT = -1
_keys = itertools.count(1)
_lock = threading.Lock()
_entries: "weakref.WeakValueDictionary[int, _WeightEntry]" = weakref.WeakValueDictionary()
_layers: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()


class _WeightEntry:
    """What ``weight_key`` resolves to: a PreparedWeight for the canonical tensors it was made
    from. A *static* entry wraps a user's PreparedWeight as is; a lazy one (Fp4Linear's)
    prepares on first use and again whenever its tensors change (``.to()``, a loaded
    state_dict), which the (pointer, version counter, epoch) signature detects."""

    def __init__(self, prepared: PreparedWeight | None = None):
        self.static = prepared is not None
        self.prepared = prepared
        self.epoch = 0
        self._sig: tuple | None = None
        if prepared is not None:
            c = prepared.canonical
            self._sig = (c.b.data_ptr(), c.b_scale.data_ptr())
        self._warned = False

    def invalidate(self) -> None:
        """Forget the prepared copies (the canonical tensors were overwritten in place)."""
        self.epoch += 1

    def resolve(self, b: torch.Tensor, b_sf: torch.Tensor, use_nvfp4: bool, out_dtype: torch.dtype,
                use_8x4: bool, has_alpha: bool) -> PreparedWeight | None:
        if self.static:
            same = (b.data_ptr(), b_sf.data_ptr()) == self._sig
            return self.prepared if same else None
        sig = (b.data_ptr(), b_sf.data_ptr(), version_counter(b), version_counter(b_sf), b.device, self.epoch,
               use_nvfp4, out_dtype, use_8x4, has_alpha)
        if sig == self._sig:
            return self.prepared
        if b.is_cuda and torch.cuda.is_current_stream_capturing():
            if not self._warned:
                self._warned = True
                log.warning("fp4core: a prepared weight changed during CUDA-graph capture; using the "
                            "canonical weight (run the model once eagerly before capturing)")
            return None
        self.prepared = prepare(b.t(), b_sf, use_nvfp4=use_nvfp4, out_dtype=out_dtype,
                                use_8x4_sf_layout=use_8x4, has_alpha=has_alpha)
        self._sig = sig
        return self.prepared


def version_counter(t: torch.Tensor) -> int:
    """``t._version``, or 0 for an inference tensor (it keeps none; entries' epochs cover it)."""
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter; the epoch covers them
        return 0


def new_weight_key() -> tuple[int, "_WeightEntry"]:
    """A fresh key for a lazily prepared weight (``Fp4Linear`` keeps the entry alive)."""
    entry = _WeightEntry()
    with _lock:
        key = next(_keys)
        _entries[key] = entry
    return key, entry


def register_prepared(w: PreparedWeight) -> int:
    """The ``weight_key`` of a PreparedWeight for ``torch.ops.fp4core.mm_fp4`` (registered once;
    the registration lives as long as ``w``). Call it before ``torch.compile`` tracing."""
    key = getattr(w, "_fp4core_key", None)
    if key is not None and _entries.get(key) is not None:
        return key
    entry = _WeightEntry(w)
    with _lock:
        key = next(_keys)
        _entries[key] = entry
    w._fp4core_key = key
    w._fp4core_entry = entry  # the weak registry entry lives as long as the weight
    return key


def register_layer(plans) -> int:
    """The ``layer_key`` of a layer's ``LayerPlans`` for ``torch.ops.fp4core.linear_fp4`` (the
    registration lives as long as ``plans``; ``Fp4Linear`` keeps it)."""
    with _lock:
        key = next(_keys)
        _layers[key] = plans
    return key


# The ops are defined with torch.library's low-level API (define + impl per device) rather than
# torch.library.custom_op: the latter adds ~8 us of Python per call (autograd wrapper, dynamo
# guard), which is most of the host overhead of a decode-size GEMM.
_lib = torch.library.Library("fp4core", "DEF")
# weight_key as int, not SymInt: it is a constant of the graph, never a symbolic size
_lib.define("mm_fp4(Tensor a, Tensor a_descale, Tensor b, Tensor b_descale, Tensor? alpha, ScalarType out_dtype, "
            "bool use_nvfp4, bool use_8x4_sf_layout, str backend, int weight_key) -> Tensor")
_lib.define("quantize_fp4(Tensor x, str fmt, str sf_layout, Tensor? global_scale, bool auto_global_scale) "
            "-> (Tensor, Tensor, Tensor)")
_lib.define("mm_bf16_fp4(Tensor a, Tensor b, Tensor b_descale, Tensor? alpha, ScalarType out_dtype, "
            "bool use_nvfp4, str backend, int weight_key) -> Tensor")
_lib.define("linear_fp4(Tensor x, Tensor weight_fp4, Tensor weight_scale, Tensor weight_global_scale, "
            "Tensor input_global_scale, Tensor static_alpha, str fmt, str sf_layout, bool static_scale, "
            "ScalarType out_dtype, str backend, int layer_key) -> Tensor")


def _impl(name: str):
    def register(fn):
        for key in ("CPU", "CUDA"):
            _lib.impl(name, fn, key)
        return fn
    return register


def _fake(name: str):
    return torch.library.register_fake(f"fp4core::{name}", lib=_lib)


# Inference-only ops: quantization is a step function and the GEMM has no backward here. A
# fallthrough Autograd kernel makes the outputs plain tensors (no grad_fn) at no per-call cost,
# so AOT autograd under torch.compile never asks for a backward, even when an Fp4Linear's input
# requires grad (e.g. behind a float Linear of a partly quantized model). The implementations
# detach their float inputs so nothing inside them records a graph either.
for _name in ("mm_fp4", "mm_bf16_fp4", "quantize_fp4", "linear_fp4"):
    _lib.impl(_name, torch.library.fallthrough_kernel, "Autograd")


# -- the GEMM op ------------------------------------------------------------------------------
@_impl("mm_fp4")
def _mm_fp4_op(a: torch.Tensor, a_descale: torch.Tensor, b: torch.Tensor, b_descale: torch.Tensor,
               alpha: Optional[torch.Tensor], out_dtype: torch.dtype, use_nvfp4: bool,
               use_8x4_sf_layout: bool, backend: str, weight_key: int) -> torch.Tensor:
    fmt = Fp4Format.from_flags(use_nvfp4)
    if alpha is not None:
        alpha = alpha.detach()
    if weight_key != _NO_WEIGHT:
        entry = _entries.get(weight_key)
        pw = None if entry is None else entry.resolve(b, b_descale, use_nvfp4, out_dtype,
                                                       use_8x4_sf_layout, alpha is not None)
        if pw is not None:
            return api.mm_fp4(a, pw, a_descale, None, alpha, out_dtype, None, fmt.block_size,
                              use_8x4_sf_layout, backend, use_nvfp4)
    return api.mm_fp4(a, b.t(), a_descale, b_descale, alpha, out_dtype, None, fmt.block_size,
                      use_8x4_sf_layout, backend, use_nvfp4)


@_fake("mm_fp4")
def _mm_fp4_fake(a, a_descale, b, b_descale, alpha, out_dtype, use_nvfp4, use_8x4_sf_layout, backend,
                 weight_key):
    torch._check(a.dim() == 2 and b.dim() == 2,
                 lambda: f"fp4core::mm_fp4: a and b must be 2-D, got {tuple(a.shape)} and {tuple(b.shape)}")
    torch._check(a.shape[1] == b.shape[1],
                 lambda: f"fp4core::mm_fp4: K mismatch: a is (M, {a.shape[1]}) packed, b is (N, {b.shape[1]}) "
                         "packed (b is the row-major (N, K/2) weight)")
    torch._check(out_dtype in (torch.bfloat16, torch.float16),
                 lambda: f"fp4core::mm_fp4: out_dtype must be bfloat16 or float16, got {out_dtype}")
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


def _weight_arguments(b, b_descale, tensor_shape: str, sf_hint: str) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(weight_key, packed weight bytes, flat scale bytes) for the GEMM ops: a PreparedWeight's
    canonical tensors and its registration key, or a plain 2-D tensor's bytes (as given: the
    caller transposes) with ``_NO_WEIGHT``."""
    if isinstance(b, PreparedWeight):
        if b_descale is not None:
            raise ValueError("b_descale: must be None when b is a PreparedWeight (its scales are inside it)")
        return register_prepared(b), b.canonical.b, b.canonical.b_scale
    if not isinstance(b, torch.Tensor) or b.dim() != 2:
        raise ValueError(f"b: expected a 2-D {tensor_shape} or a PreparedWeight, got "
                         f"{type(b).__name__} {tuple(getattr(b, 'shape', ()))}")
    if b_descale is None:
        raise ValueError(f"b_descale: required when b is a tensor{sf_hint}")
    return _NO_WEIGHT, as_bytes(b), flat_scale_bytes(b_descale)


def mm_fp4(a: torch.Tensor, b: torch.Tensor | PreparedWeight, a_descale: torch.Tensor,
           b_descale: torch.Tensor | None, alpha: torch.Tensor | None = None,
           out_dtype: torch.dtype = torch.bfloat16, block_size: int = 16,
           use_8x4_sf_layout: bool = False, backend: str = "auto", use_nvfp4: bool = True) -> torch.Tensor:
    """``fp4core.mm_fp4`` through the ``fp4core::mm_fp4`` custom op (compile/graph friendly).

    Same arguments as ``fp4core.mm_fp4`` (FlashInfer's convention: ``b`` is ``b_fp4.T``,
    (K/2, N) column-major, ``b_descale`` is ``b_sf.T``), or ``b`` a PreparedWeight with
    ``b_descale=None``; no ``out`` (custom ops return fresh tensors; in a CUDA graph the
    output lives in the graph's pool). Returns (M, N) of ``out_dtype``. Arguments are checked
    when the op runs (and shapes when it is traced).
    """
    check_format(block_size, use_nvfp4)
    key, w, w_sf = _weight_arguments(b, b_descale, "(K/2, N) tensor (b_fp4.T)", " (pass b_sf.T)")
    if key == _NO_WEIGHT:
        w = w.t()  # mm_fp4 takes the column-major view b_fp4.T; the op takes the rows
    return torch.ops.fp4core.mm_fp4(a, a_descale, w, w_sf, alpha, out_dtype, use_nvfp4,
                                    use_8x4_sf_layout, backend, key)


# -- the weight-only (W4A16) GEMM op ----------------------------------------------------------
class _Bf16WeightEntry:
    """A lazily prepared weight-only weight (``Fp4Linear(activations="bf16")``): prepared for
    bf16 activations on first use and again when its tensors change."""

    def __init__(self):
        self.prepared: PreparedWeight | None = None
        self._sig: tuple | None = None
        self.epoch = 0

    def invalidate(self) -> None:
        self.epoch += 1

    def resolve(self, b: torch.Tensor, b_sf: torch.Tensor, use_nvfp4: bool, has_alpha: bool) -> PreparedWeight | None:
        sig = (b.data_ptr(), b_sf.data_ptr(), version_counter(b), version_counter(b_sf), b.device, self.epoch,
               use_nvfp4, has_alpha)
        if sig == self._sig:
            return self.prepared
        if b.is_cuda and torch.cuda.is_current_stream_capturing():
            return None  # no preparing inside a capture: the canonical weight this once
        self.prepared = prepare(b.t(), b_sf, use_nvfp4=use_nvfp4, has_alpha=has_alpha, activations="bf16")
        self._sig = sig
        return self.prepared


def new_bf16_weight_key() -> tuple[int, _Bf16WeightEntry]:
    """A fresh ``weight_key`` for ``torch.ops.fp4core.mm_bf16_fp4`` whose weight is prepared
    lazily (the caller keeps the entry alive)."""
    entry = _Bf16WeightEntry()
    with _lock:
        key = next(_keys)
        _entries[key] = entry
    return key, entry


@_impl("mm_bf16_fp4")
def _mm_bf16_fp4_op(a: torch.Tensor, b: torch.Tensor, b_descale: torch.Tensor, alpha: Optional[torch.Tensor],
                    out_dtype: torch.dtype, use_nvfp4: bool, backend: str, weight_key: int) -> torch.Tensor:
    a = a.detach()
    if alpha is not None:
        alpha = alpha.detach()
    block = 16 if use_nvfp4 else 32
    entry = _entries.get(weight_key) if weight_key != _NO_WEIGHT else None
    if isinstance(entry, _Bf16WeightEntry):
        pw = entry.resolve(b, b_descale, use_nvfp4, alpha is not None)
        if pw is not None:
            return api.mm_bf16_fp4(a, pw, None, alpha, backend=backend, out_dtype=out_dtype, block_size=block)
    elif entry is not None and entry.static and entry.prepared.activation == "bf16":
        same = (b.data_ptr(), b_descale.data_ptr()) == entry._sig
        if same:
            return api.mm_bf16_fp4(a, entry.prepared, None, alpha, backend=backend, out_dtype=out_dtype,
                                   block_size=block)
    return api.mm_bf16_fp4(a, b, b_descale, alpha, backend=backend, out_dtype=out_dtype, block_size=block)


@_fake("mm_bf16_fp4")
def _mm_bf16_fp4_fake(a, b, b_descale, alpha, out_dtype, use_nvfp4, backend, weight_key):
    torch._check(a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[1] * 2,
                 lambda: f"fp4core::mm_bf16_fp4: a must be (M, K) and b (N, K/2), got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    torch._check(out_dtype in (torch.bfloat16, torch.float16),
                 lambda: f"fp4core::mm_bf16_fp4: out_dtype must be bfloat16 or float16, got {out_dtype}")
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


def mm_bf16_fp4(a: torch.Tensor, b: torch.Tensor | PreparedWeight, b_descale: torch.Tensor | None,
                alpha: torch.Tensor | None = None, *, backend: str = "auto",
                out_dtype: torch.dtype | None = None, block_size: int = 16) -> torch.Tensor:
    """``fp4core.mm_bf16_fp4`` through the ``fp4core::mm_bf16_fp4`` custom op (torch.compile and
    CUDA-graph friendly). Same arguments (``b`` (N, K/2) row-major with its 128x4 scales, or
    the prepared weight from ``prepare_bf16_fp4_weights`` with ``b_descale=None``), no ``out``.
    Returns (M, N) of ``out_dtype`` (default: a's dtype)."""
    check_format(block_size, block_size == 16)
    key, w, w_sf = _weight_arguments(b, b_descale, "(N, K/2) tensor", "")
    return torch.ops.fp4core.mm_bf16_fp4(a, w, w_sf, alpha, a.dtype if out_dtype is None else out_dtype,
                                         block_size == 16, backend, key)


# -- the quantization op ----------------------------------------------------------------------
@_impl("quantize_fp4")
def _quantize_op(x: torch.Tensor, fmt: str, sf_layout: str, global_scale: Optional[torch.Tensor],
                 auto_global_scale: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    f = Fp4Format(fmt)
    layout = SfLayout.parse(sf_layout)
    x = x.detach()
    if global_scale is not None:
        global_scale = global_scale.detach()
    if x.is_cuda:
        from fp4core.formats.kernels import quantize_kernels
        kernels = quantize_kernels()
        if kernels is not None:
            q, sf, gs = kernels.quantize(x if x.stride(1) == 1 else x.contiguous(), f, layout,
                                         global_scale, auto_global_scale)
            # an op's outputs must not alias its inputs (the given global scale)
            return q, sf, (gs.clone() if f is Fp4Format.NVFP4 and not auto_global_scale else gs)
    if f is Fp4Format.MXFP4:
        q, sf = mxfp4_quantize(x, layout)
        return q, sf, torch.ones(1, dtype=torch.float32, device=x.device)
    gs = compute_global_scale(x) if auto_global_scale else global_scale.reshape(1).to(torch.float32)
    q, sf = nvfp4_quantize(x, gs, layout)
    return q, sf, gs if auto_global_scale else gs.clone()


@_fake("quantize_fp4")
def _quantize_fake(x, fmt, sf_layout, global_scale, auto_global_scale):
    block = Fp4Format(fmt).block_size
    layout = SfLayout.parse(sf_layout)
    rows, k = x.shape
    torch._check(k % block == 0, lambda: f"fp4core::quantize_fp4: K = {k} must be a multiple of {block}")
    prow = (rows + layout.row_tile - 1) // layout.row_tile * layout.row_tile
    _, pcol = padded_scale_shape(1, k // block, layout)
    return (x.new_empty((rows, k // 2), dtype=torch.uint8), x.new_empty((prow, pcol), dtype=torch.uint8),
            x.new_empty((1,), dtype=torch.float32))


def quantize_fp4(x: torch.Tensor, fmt: Fp4Format | str = "nvfp4",
                 sf_layout: SfLayout | str = SfLayout.layout_128x4,
                 global_scale: torch.Tensor | float | str | None = "auto"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize activations or weights to NVFP4 / MXFP4 (the ``fp4core::quantize_fp4`` op).

    The bytes equal ``nvfp4_quantize`` / ``mxfp4_quantize`` (the CPU reference); on CUDA a
    Triton kernel writes the codes and the swizzled scales in one pass (two with
    ``global_scale="auto"``: amax first).

    Args:
        x: (rows, K) float32/float16/bfloat16, K a multiple of 16 (NVFP4) or 32 (MXFP4);
            more leading dimensions are flattened into rows.
        fmt: "nvfp4" or "mxfp4".
        sf_layout: "128x4" (default), "8x4" or "linear".
        global_scale: NVFP4: "auto" (``448 * 6 / amax(|x|)``, computed on the device, no host
            sync), a positive float, or a float32 tensor with one element. MXFP4: "auto" or None.
    Returns:
        (x_fp4 uint8 (rows, K/2), x_sf uint8 (padded_rows, padded_K/block) in ``sf_layout``
        order, global_scale float32 (1,): the one used; ones for MXFP4). For NVFP4 the GEMM's
        alpha is ``1 / (gs_a * gs_b)``.
    """
    f = Fp4Format(fmt.value if isinstance(fmt, Fp4Format) else str(fmt).lower())
    layout = SfLayout.parse(sf_layout)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x: expected a float tensor with at least 2 dimensions (rows, K), got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if x.shape[-1] % f.block_size:
        raise ValueError(f"x: K = x.shape[-1] = {x.shape[-1]} must be a multiple of the {f.value} block "
                         f"size {f.block_size}")
    x2 = x.reshape(-1, x.shape[-1])
    auto, gs = False, None
    if f is Fp4Format.MXFP4:
        if global_scale not in (None, "auto"):
            raise ValueError(f"global_scale: MXFP4 has no global scale; pass None or 'auto', got {global_scale!r}")
    elif isinstance(global_scale, str):
        if global_scale != "auto":
            raise ValueError(f"global_scale: expected 'auto', a float or a tensor, got {global_scale!r}")
        auto = True
    elif global_scale is None:
        raise ValueError("global_scale: NVFP4 needs one: 'auto', a float or a float32 tensor")
    else:
        gs = torch.as_tensor(global_scale, dtype=torch.float32, device=x.device).reshape(-1)
        if gs.numel() != 1:
            raise ValueError(f"global_scale: expected one element, got {gs.numel()}")
        check_global_scale(gs)
    return torch.ops.fp4core.quantize_fp4(x2, f.value, layout.value, gs, auto)


# -- the whole-layer op -----------------------------------------------------------------------
def linear_by_ops(x: torch.Tensor, weight_fp4: torch.Tensor, weight_scale: torch.Tensor,
                  weight_global_scale: torch.Tensor, input_global_scale: torch.Tensor,
                  static_alpha: torch.Tensor, fmt: str, sf_layout: str, static_scale: bool,
                  out_dtype: torch.dtype, backend: str, weight_key: int) -> torch.Tensor:
    """An Fp4Linear GEMM as the two ops (quantize, then mm through the selector): the route
    without Triton, and the reference the planned route is tested against. Arguments as
    ``linear_fp4``'s, with ``weight_key`` the layer's prepared-weight key. Returns (M, N)."""
    nv = fmt == "nvfp4"
    if nv and static_scale:
        a, a_sf, _ = torch.ops.fp4core.quantize_fp4(x, fmt, sf_layout, input_global_scale, False)
        alpha = static_alpha
    else:
        a, a_sf, gs_a = torch.ops.fp4core.quantize_fp4(x, fmt, sf_layout, None, nv)
        alpha = 1.0 / (gs_a * weight_global_scale) if nv else None
    return torch.ops.fp4core.mm_fp4(a, a_sf, weight_fp4, weight_scale, alpha, out_dtype, nv,
                                    sf_layout == "8x4", backend, weight_key)


@_impl("linear_fp4")
def _linear_op(x: torch.Tensor, weight_fp4: torch.Tensor, weight_scale: torch.Tensor,
               weight_global_scale: torch.Tensor, input_global_scale: torch.Tensor,
               static_alpha: torch.Tensor, fmt: str, sf_layout: str, static_scale: bool,
               out_dtype: torch.dtype, backend: str, layer_key: int) -> torch.Tensor:
    x = x.detach()
    plans = _layers.get(layer_key)
    kernels = planned_kernels(x) if plans is not None else None
    if kernels is not None:
        return plans.gemm(kernels, x if x.stride(1) == 1 else x.contiguous(), out_dtype, weight_fp4,
                          weight_scale, weight_global_scale, input_global_scale, static_alpha,
                          static_scale, backend)
    key = plans.entry_key if plans is not None else _NO_WEIGHT
    return linear_by_ops(x, weight_fp4, weight_scale, weight_global_scale, input_global_scale, static_alpha,
                         fmt, sf_layout, static_scale, out_dtype, backend, key)


@_fake("linear_fp4")
def _linear_fake(x, weight_fp4, weight_scale, weight_global_scale, input_global_scale, static_alpha, fmt,
                 sf_layout, static_scale, out_dtype, backend, layer_key):
    torch._check(x.dim() == 2 and x.shape[1] == weight_fp4.shape[1] * 2,
                 lambda: f"fp4core::linear_fp4: x must be (M, {weight_fp4.shape[1] * 2}), got {tuple(x.shape)}")
    return x.new_empty((x.shape[0], weight_fp4.shape[0]), dtype=out_dtype)


def planned_kernels(x: torch.Tensor):
    """The Triton quantization module when a layer plan can run on ``x``'s device, else None.
    CPU tensors take plans only under Triton's interpreter (the tests)."""
    from fp4core.formats.kernels import quantize_kernels
    kernels = quantize_kernels()
    if kernels is None or not (x.is_cuda or os.environ.get("TRITON_INTERPRET")):
        return None
    return kernels
