"""``Fp4Linear``: an ``nn.Linear`` replacement that runs W4A4 through fp4core.

    model = fp4core.pytorch.nn.quantize_linears(model, format="nvfp4")   # every Linear it can take
    y = model(x)                                                 # also under torch.compile

The weight is quantized once (buffers: packed codes, 128x4 scales, global scale) and
prepared for every backend that wants its own layout on first use; activations are quantized
on the fly (NVFP4: per-tensor global scale from their amax, computed on the device). The GEMM
is ``backend="auto"``'s tuned/cached choice, frozen per batch size in a plan
(``fp4core.pytorch.linear_plan``); under ``torch.compile`` the layer is one op,
``torch.ops.fp4core.linear_fp4``, that runs the same plans.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import torch
from torch import nn

from fp4core.pytorch import ops
from fp4core.formats.fp4 import Fp4Format
from fp4core.pytorch.linear_plan import LayerPlans, LinearPlan
from fp4core.dispatch.prepared import PreparedWeight
from fp4core.dispatch.problem import Operands
from fp4core.formats.layouts import SfLayout, padded_scale_shape
from fp4core.formats.quantize import compute_global_scale, mxfp4_quantize, nvfp4_quantize

log = logging.getLogger("fp4core")


def _after_load(module: "Fp4Linear", incompatible_keys) -> None:
    module._entry.invalidate()
    module._bf16_entry.invalidate()
    module._layer.clear()
    module._refresh_static_alpha()


_ACT_SCALES = ("dynamic", "static")
_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: buffers that stay float32 through module dtype casts (.half(), .to(torch.bfloat16)): the
#: scales must be exact, and float16 cannot even hold a typical global scale
_FLOAT32_BUFFERS = ("weight_global_scale", "input_global_scale", "_static_alpha", "_weight_alpha", "_calib_amax")


def _canonical(b: torch.Tensor, b_sf: torch.Tensor, fmt: Fp4Format) -> PreparedWeight:
    """A PreparedWeight with no backend copies: every backend gets the canonical weight."""
    return PreparedWeight(b.shape[0], b.shape[1] * 2, fmt, b.device,
                          Operands(None, None, b, b_sf.reshape(-1)), {}, {})


class Fp4Linear(nn.Module):
    """``y = x @ dequant(W).T + bias`` with W stored in FP4 and x quantized per call.

    Args:
        in_features: K, a multiple of 16 (NVFP4) or 32 (MXFP4).
        out_features: N.
        bias: keep a bias (stored in ``dtype``).
        format: "nvfp4" or "mxfp4".
        backend: fp4core backend name or "auto".
        act_sf_layout: scale layout of the quantized activations, "128x4" or "8x4".
        act_scale: NVFP4 activation global scale: "dynamic" (from each input's amax, an extra
            pass over the input) or "static" (``input_global_scale``, set by ``calibrate`` or
            ``set_input_global_scale``; larger inputs saturate). MXFP4 has none.
        activations: "fp4" (W4A4: the input is quantized per call, as above) or "bf16"
            (weight-only W4A16: the input goes to ``mm_bf16_fp4`` as bf16/fp16, no activation
            quantization; ``act_scale`` and ``act_sf_layout`` are then unused).
        device, dtype: where the buffers live; ``dtype`` is the bias dtype.
    Buffers (all in ``state_dict``, with ``act_scale`` as extra state): ``weight_fp4`` uint8
    (N, K/2), ``weight_scale`` uint8 (round_up(N, 128), round_up(K/block, 4)) in the 128x4
    layout, ``weight_global_scale`` float32 (1,) (ones for MXFP4), ``input_global_scale``
    float32 (1,), ``bias`` (N,) or None. Module dtype casts (``.half()``, ``.to(torch.bfloat16)``)
    convert the bias only: the scales stay float32 (float16 cannot hold a typical global scale).
    Input (..., K) float32/bfloat16/float16 (other dtypes: TypeError); output (..., N) of the
    input's dtype (the GEMM writes bf16 for float32 inputs, fp16/bf16 otherwise).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, format: str = "nvfp4",
                 backend: str = "auto", act_sf_layout: str = "128x4", act_scale: str = "dynamic",
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.bfloat16,
                 activations: str = "fp4"):
        super().__init__()
        fmt = Fp4Format(format)
        if activations not in ("fp4", "bf16"):
            raise ValueError(f"activations: expected 'fp4' or 'bf16' (weight-only), got {activations!r}")
        self.activations = activations
        if act_scale not in _ACT_SCALES:
            raise ValueError(f"act_scale: expected one of {_ACT_SCALES}, got {act_scale!r}")
        layout = SfLayout.parse(act_sf_layout)
        if layout is SfLayout.layout_linear:
            raise ValueError("act_sf_layout: expected '128x4' or '8x4', got 'linear'")
        if in_features % fmt.block_size or in_features <= 0:
            raise ValueError(f"in_features: {fmt.value} needs a positive multiple of {fmt.block_size}, "
                             f"got {in_features}")
        if out_features <= 0:
            raise ValueError(f"out_features: expected a positive size, got {out_features}")
        if not isinstance(backend, str):
            raise TypeError(f"backend: expected a backend name or 'auto', got {backend!r}")
        self.in_features, self.out_features = in_features, out_features
        self.format, self.backend, self.act_sf_layout = fmt.value, backend, layout.value
        self.act_scale = act_scale
        self._fmt, self._layout = fmt, layout  # the enums, for the per-call path
        prow, pcol = padded_scale_shape(out_features, in_features // fmt.block_size, SfLayout.layout_128x4)
        self.register_buffer("weight_fp4", torch.zeros(out_features, in_features // 2, dtype=torch.uint8,
                                                       device=device))
        self.register_buffer("weight_scale", torch.zeros(prow, pcol, dtype=torch.uint8, device=device))
        self.register_buffer("weight_global_scale", torch.ones(1, dtype=torch.float32, device=device))
        self.register_buffer("input_global_scale", torch.ones(1, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        # alpha of the static mode, kept so a call launches no kernel for it (updated in place,
        # so a captured CUDA graph sees new values)
        self.register_buffer("_static_alpha", torch.ones(1, dtype=torch.float32, device=device),
                             persistent=False)
        self.register_buffer("_calib_amax", None, persistent=False)
        # W4A16's alpha, 1 / weight_global_scale (kept in step with it, like _static_alpha)
        self.register_buffer("_weight_alpha", torch.ones(1, dtype=torch.float32, device=device),
                             persistent=False)
        self._new_runtime()
        self.register_load_state_dict_post_hook(_after_load)

    def _new_runtime(self) -> None:
        # the ops find this layer's prepared weight and plans by key (neither is a tensor)
        self._bf16_key, self._bf16_entry = ops.new_bf16_weight_key()
        self._key, self._entry = ops.new_weight_key()
        self._layer = LayerPlans(self._key, self._entry, self._fmt, self._layout, self.out_features, _canonical)
        self._layer_key = ops.register_layer(self._layer)

    @property
    def _plans(self) -> dict[tuple, LinearPlan]:
        """The eager plans, by (M, out_dtype)."""
        return self._layer.plans

    def get_extra_state(self):
        return {"act_scale": self.act_scale, "activations": self.activations}

    def set_extra_state(self, state) -> None:
        self.act_scale = state.get("act_scale", "dynamic")
        self.activations = state.get("activations", "fp4")

    def _refresh_static_alpha(self) -> None:
        with torch.no_grad():
            self._static_alpha.copy_(1.0 / (self.input_global_scale * self.weight_global_scale))
            self._weight_alpha.copy_(1.0 / self.weight_global_scale)

    def set_input_global_scale(self, global_scale: torch.Tensor | float) -> None:
        """Use a fixed NVFP4 activation global scale from now on (``act_scale="static"``).

        ``global_scale``: positive float or one-element tensor, e.g. ``448 * 6 / amax`` over
        calibration inputs (what ``calibrate`` sets)."""
        if self.format != "nvfp4":
            raise ValueError("set_input_global_scale: MXFP4 has no activation global scale")
        gs = torch.as_tensor(global_scale, dtype=torch.float32).reshape(-1)
        if gs.numel() != 1 or not bool(torch.isfinite(gs).all()) or not bool((gs > 0).all()):
            raise ValueError(f"global_scale: expected one positive finite value, got {global_scale!r}")
        with torch.no_grad():
            self.input_global_scale.copy_(gs)
        self._refresh_static_alpha()
        self.act_scale = "static"

    # copies (deepcopy, pickle) get their own prepared-weight entry
    def __getstate__(self):
        state = self.__dict__.copy()
        for name in ("_entry", "_key", "_layer", "_layer_key", "_bf16_entry", "_bf16_key"):
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._new_runtime()

    @classmethod
    def from_linear(cls, linear: nn.Linear, format: str = "nvfp4", backend: str = "auto",
                    act_sf_layout: str = "128x4", quantize: bool = True,
                    act_scale: str = "dynamic", activations: str = "fp4") -> "Fp4Linear":
        """Quantize ``linear``'s weight (on its device; Triton kernels on CUDA). ``activations``:
        "fp4" (W4A4) or "bf16" (weight-only W4A16), see the class docstring.

        NVFP4 uses the global scale ``448 * 6 / amax(|W|)``. With ``quantize=False`` the buffers
        are left zero, for a ``load_state_dict`` of already quantized weights.
        """
        w = linear.weight.detach()
        bias_dtype = linear.bias.dtype if linear.bias is not None else w.dtype
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, format, backend,
                act_sf_layout, act_scale, device=w.device, dtype=bias_dtype, activations=activations)
        if linear.bias is not None:
            m.bias = linear.bias.detach().clone()
        if not quantize:
            return m
        if m.format == "nvfp4":
            gs = compute_global_scale(w)
            m.weight_fp4, m.weight_scale = nvfp4_quantize(w, gs)
            m.weight_global_scale = gs.reshape(1).to(torch.float32)
            m._refresh_static_alpha()
        else:
            m.weight_fp4, m.weight_scale = mxfp4_quantize(w)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) float32/bfloat16/float16 -> (..., N) of x's dtype (an empty batch gives
        an empty result, as ``nn.Linear``)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Fp4Linear: expected input (..., {self.in_features}), got {tuple(x.shape)}")
        if x.dtype not in _INPUT_DTYPES:
            raise TypeError(f"Fp4Linear: expected a float32, bfloat16 or float16 input, got {x.dtype}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        if self._calib_amax is not None:  # inside fp4core.pytorch.nn.calibrate(): record the input range
            a = x2.detach().float().abs()  # finite values only, as compute_global_scale
            amax = torch.where(a < float("inf"), a, 0.0).amax().reshape(1) if x2.numel() \
                else x2.new_zeros(1, dtype=torch.float32)
            torch.maximum(self._calib_amax, amax, out=self._calib_amax)
        if x2.shape[0] == 0:
            y = x2.new_empty((0, self.out_features), dtype=out_dtype)
        elif self.activations == "bf16":
            y = self._weight_only(x2, out_dtype)
        elif not torch.compiler.is_compiling() and (kernels := ops.planned_kernels(x2)) is not None:
            # eager: the plan directly, no torch.library dispatch
            y = self._layer.gemm(kernels, x2.detach(), out_dtype, self.weight_fp4, self.weight_scale,
                                 self.weight_global_scale, self.input_global_scale, self._static_alpha,
                                 self.act_scale == "static", self.backend)
        else:
            y = torch.ops.fp4core.linear_fp4(x2, self.weight_fp4, self.weight_scale, self.weight_global_scale,
                                             self.input_global_scale, self._static_alpha, self.format,
                                             self.act_sf_layout, self.act_scale == "static", out_dtype,
                                             self.backend, self._layer_key)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        if self.bias is not None:
            y = y.add_(self.bias) if self.bias.dtype == y.dtype else y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def _weight_only(self, x2: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """W4A16: x2 (M, K) as bf16/fp16 (float32 inputs in bf16) straight into the GEMM; NVFP4's
        alpha is the weight's dequantization scale, 1 / weight_global_scale."""
        a = x2.detach().to(out_dtype)
        if not a.is_contiguous() or a.data_ptr() % 16:  # the kernels' 16-byte loads (a view at an odd offset)
            a = a.clone(memory_format=torch.contiguous_format)
        nv = self.format == "nvfp4"
        if not torch.compiler.is_compiling():  # eager: this M's plan, no torch.library dispatch
            y = self._layer.weight_only_gemm(a, self.weight_fp4, self.weight_scale,
                                             self._weight_alpha if nv else None, self.backend, self._bf16_entry)
            if y is not None:
                return y
        return torch.ops.fp4core.mm_bf16_fp4(a, self.weight_fp4, self.weight_scale,
                                             self._weight_alpha if nv else None, out_dtype, nv,
                                             self.backend, self._bf16_key)

    def _op_gemm(self, x2: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """The layer as two ops (quantize, mm through the selector), no plans: the
        reference the planned path is tested against. x2 (M, K) -> (M, N) out_dtype, no bias."""
        return ops.linear_by_ops(x2, self.weight_fp4, self.weight_scale, self.weight_global_scale,
                                 self.input_global_scale, self._static_alpha, self.format, self.act_sf_layout,
                                 self.act_scale == "static", out_dtype, self.backend, self._key)

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / .half() replace the buffers: the plans name the old ones
        self._layer.clear()
        scales = {name: self._buffers[name] for name in _FLOAT32_BUFFERS if self._buffers.get(name) is not None}
        out = super()._apply(fn, recurse)
        for name, old in scales.items():
            new = self._buffers[name]
            if new.dtype != torch.float32:  # a dtype cast: keep the exact float32 value, take the move
                self._buffers[name] = old.to(device=new.device)
        return out

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as the GEMM sees it, (N, K) in ``dtype`` (exact in float32/float64)."""
        from fp4core.formats.quantize import dequantize
        nv = self.format == "nvfp4"
        return dequantize(self.weight_fp4, self.weight_scale, self.weight_global_scale if nv else None,
                          use_nvfp4=nv, dtype=dtype)

    def extra_repr(self) -> str:
        if self.activations == "bf16":
            return (f"in_features={self.in_features}, out_features={self.out_features}, "
                    f"bias={self.bias is not None}, format={self.format}, backend={self.backend}, "
                    f"activations=bf16")
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, format={self.format}, backend={self.backend}, "
                f"act_sf_layout={self.act_sf_layout}"
                + (f", act_scale={self.act_scale}" if self.format == "nvfp4" else ""))


def quantize_linears(model: nn.Module, format: str = "nvfp4",
                     filter: Callable[[str, nn.Linear], bool] | None = None, backend: str = "auto",
                     act_sf_layout: str = "128x4", quantize: bool = True,
                     act_scale: str = "dynamic", activations: str = "fp4") -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by an ``Fp4Linear``.

    Args:
        model: any module; returned for chaining.
        format: "nvfp4" or "mxfp4".
        filter: ``filter(qualified_name, linear) -> bool``; False keeps that layer as it is.
        backend, act_sf_layout, act_scale: passed to every Fp4Linear (a "static" activation
            scale starts at 1: run ``calibrate`` or load a calibrated state_dict).
        quantize: False leaves the weights zero (to ``load_state_dict`` a quantized model).
        activations: "fp4" (W4A4) or "bf16" (weight-only W4A16 layers: no activation
            quantization).
    Layers whose ``in_features`` is not a multiple of the format's block size (16 NVFP4,
    32 MXFP4) are kept, each with an INFO log line that names it and says why. A Linear
    registered under several names becomes one Fp4Linear under all of them.
    """
    block = Fp4Format(format).block_size
    targets = []
    for name, mod in model.named_modules(remove_duplicate=False):  # every name of a shared Linear
        if type(mod) is not nn.Linear:  # subclasses may change forward; leave them alone
            continue
        if filter is not None and not filter(name, mod):
            log.info("fp4core.pytorch.nn: keeping %s as nn.Linear (filter)", name)
            continue
        if mod.in_features % block:
            log.info("fp4core.pytorch.nn: keeping %s as nn.Linear: in_features=%d is not a multiple of the %s "
                     "block size %d", name, mod.in_features, format, block)
            continue
        targets.append((name, mod))
    converted: dict[int, Fp4Linear] = {}  # a Linear used under several names stays one (shared) layer
    for name, mod in targets:
        layer = converted.get(id(mod))
        if layer is None:
            layer = converted[id(mod)] = Fp4Linear.from_linear(mod, format, backend, act_sf_layout, quantize,
                                                               act_scale, activations)
        if not name:  # the model itself is a Linear
            return layer
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
    return model


@contextlib.contextmanager
def calibrate(model: nn.Module) -> Iterator[list[Fp4Linear]]:
    """Record the activation range of every NVFP4 ``Fp4Linear`` in ``model`` while the block
    runs (inputs quantized dynamically meanwhile); on a normal exit each layer switches to
    ``act_scale="static"`` with ``input_global_scale = 448 * 6 / amax`` over all recorded inputs
    (1 for a layer that saw only zeros or no input). Static scales save the amax pass and the
    alpha computation of every call; inputs beyond the calibrated range saturate.

        with fp4core.pytorch.nn.calibrate(model):
            for batch in calibration_batches:
                model(batch)
    """
    layers = [m for m in model.modules() if isinstance(m, Fp4Linear) and m.format == "nvfp4"]
    for m in layers:
        m._calib_amax = torch.zeros(1, dtype=torch.float32, device=m.weight_fp4.device)
    ok = False
    try:
        yield layers
        ok = True
    finally:
        for m in layers:
            amax, m._calib_amax = m._calib_amax, None
            if ok:
                gs = torch.where(amax > 0, amax.reciprocal() * (448.0 * 6.0), torch.ones_like(amax))
                m.set_input_global_scale(gs)
