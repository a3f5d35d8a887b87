"""Load NVFP4 checkpoints written by NVIDIA ModelOpt into ``Fp4Linear`` layers.

    from fp4core.pytorch.checkpoint import load_modelopt_checkpoint
    replaced = load_modelopt_checkpoint(model, "model.safetensors")   # or a state dict

ModelOpt's NVFP4 export (``modelopt.torch.export``, the unified Hugging Face checkpoint) stores
four tensors per quantized linear layer, named after the layer's ``nn.Linear``:

* ``<prefix>.weight``: uint8 (N, K/2), packed E2M1 codes, two per byte.
* ``<prefix>.weight_scale``: float8_e4m3fn (N, K/16), one E4M3 scale per block of 16 along K,
  in LINEAR (row-major, unswizzled) order.
* ``<prefix>.weight_scale_2``: float32 scalar or (1,), the per-tensor scale.
* ``<prefix>.input_scale``: float32 scalar or (1,), the calibrated activation scale (absent
  for weight-only layers).

Plus ``<prefix>.bias`` when the layer has one, in the model's dtype.

Conventions this module relies on, checked against ModelOpt's source
(``modelopt/torch/quantization/qtensor/nvfp4_tensor.py``, ``NVFP4QTensor``):

* Nibble order: ``quantize`` packs ``(q[..., 1::2] << 4) | q[..., 0::2]``, so element 2i sits
  in the low nibble and 2i+1 in the high nibble, and ``dequantize`` unpacks the same way.
  This is fp4core's order (``fp4core/formats/fp4.py``): the bytes are used unchanged.
* E2M1 codes: bit 3 sign, magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 by code 0..7, rounding to
  nearest with ties to the even code (``_cast_fp4``), as fp4core's.
* ``weight_scale_2`` is a DEQUANTIZATION scale: ``get_weights_scaling_factor_2`` returns
  ``amax(|W|) / (6 * 448)``, the block scales are ``E4M3(block_amax / (6 * weight_scale_2))``
  (1.0 for an all-zero block), and ``dequantize`` computes
  ``w = e2m1 * float(weight_scale) * weight_scale_2``. fp4core's ``weight_global_scale`` is
  the QUANTIZATION scale (dequantization divides by it), so
  ``Fp4Linear.weight_global_scale = 1 / weight_scale_2``.
* ``input_scale`` is likewise ``amax(|x|) / (6 * 448)`` over the calibration data
  (``get_activation_scaling_factor``: ``amax / (maxbound * 448)``, maxbound 6 for E2M1), so a
  layer with one gets ``act_scale="static"`` and ``input_global_scale = 1 / input_scale``.
  TensorRT-LLM's NVFP4 loader makes the same two inversions when it reads these checkpoints.
* The scales of a layer are in linear order; fp4core keeps weight scales in the 128x4 layout,
  so they go through ``fp4core.swizzle_scales`` (rows padded to 128, columns to 4, zeros).

The reciprocals are computed in float64 and rounded once to float32, so
``weight_global_scale * weight_scale_2`` is 1 to within one float32 rounding; the codes and the
block scales are copied bit for bit.

Not handled: AWQ's ``pre_quant_scale`` (NVFP4_AWQ checkpoints), fused or sharded experts, and
KV-cache scales (``k_scale``/``v_scale``); such tensors are reported as unused keys (an error
with ``strict=True``).
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Mapping

import torch
from torch import nn

from fp4core.formats.layouts import swizzle_scales
from fp4core.pytorch.nn import Fp4Linear

log = logging.getLogger("fp4core")

__all__ = ["fp4linear_from_modelopt", "load_modelopt_checkpoint"]

_ACTIVATIONS = ("fp4", "bf16")
#: the per-linear tensors of a ModelOpt NVFP4 layer (besides ``bias``)
_PARTS = ("weight", "weight_scale", "weight_scale_2", "input_scale")
_NVFP4_MARKERS = ("weight_scale", "weight_scale_2")


def _supports_activations() -> bool:
    """Whether this fp4core's ``Fp4Linear`` takes an ``activations`` argument (W4A16 layers)."""
    return "activations" in inspect.signature(Fp4Linear.__init__).parameters


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _scalar(t, name: str) -> torch.Tensor:
    """A positive finite one-element scale as float64 on its device."""
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        t = torch.tensor([float(t)], dtype=torch.float64)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.numel() != 1:
        raise ValueError(f"{name}: expected a scalar or shape (1,), got shape {_shape(t)}")
    if not t.is_floating_point() or t.element_size() < 2:
        raise ValueError(f"{name}: expected a float32/float16/bfloat16 scale, got {t.dtype}")
    v = t.detach().reshape(1).to(torch.float64)
    if not bool(torch.isfinite(v).all()) or not bool((v > 0).all()):
        raise ValueError(f"{name}: expected a positive finite value, got {float(v):g}")
    return v


def _inverse_f32(v: torch.Tensor, name: str) -> torch.Tensor:
    """float32 (1,) ``1 / v``, rounded once from float64."""
    inv = (1.0 / v).to(torch.float32)
    if not bool(torch.isfinite(inv).all()) or not bool((inv > 0).all()):
        raise ValueError(f"{name}: 1/{name} = {float(1.0 / v):g} is not a positive finite float32")
    return inv


def _convert(weight: torch.Tensor, weight_scale: torch.Tensor, weight_scale_2: torch.Tensor,
             input_scale: torch.Tensor | None, bias: torch.Tensor | None, backend: str,
             activations: str, names: Mapping[str, str], bias_dtype: torch.dtype | None = None,
             device: torch.device | None = None) -> Fp4Linear:
    """``fp4linear_from_modelopt`` with the tensors' names for the messages (checkpoint keys
    when loading a file) and an optional target device / bias dtype."""
    if activations not in _ACTIVATIONS:
        raise ValueError(f"activations: expected one of {_ACTIVATIONS}, got {activations!r}")
    extra = {}
    if _supports_activations():
        extra["activations"] = activations
    elif activations != "fp4":
        raise NotImplementedError(
            f"activations={activations!r}: this fp4core's Fp4Linear has no 'activations' argument, "
            "so it cannot build weight-only (W4A16) layers; load with activations='fp4' (W4A4)")
    wn, sn, s2n, isn, bn = (names[k] for k in ("weight", "weight_scale", "weight_scale_2",
                                                 "input_scale", "bias"))
    for t, n in ((weight, wn), (weight_scale, sn)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{n}: expected a torch.Tensor, got {type(t).__name__}")
    fp4x2 = getattr(torch, "float4_e2m1fn_x2", None)
    if weight.dtype == fp4x2:
        weight = weight.view(torch.uint8)
    if weight.dtype != torch.uint8:
        raise ValueError(f"{wn}: expected uint8 packed E2M1 codes (N, K/2), got dtype {weight.dtype}")
    if weight.dim() != 2 or weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f"{wn}: expected a 2-D (N, K/2) tensor, got shape {_shape(weight)}")
    n, k = weight.shape[0], weight.shape[1] * 2
    if k % 16:
        raise ValueError(f"{wn}: K = 2 * {weight.shape[1]} = {k} is not a multiple of the NVFP4 "
                         "block size 16")
    if weight_scale.dtype not in (torch.float8_e4m3fn, torch.uint8):
        raise ValueError(f"{sn}: expected float8_e4m3fn (or its uint8 bytes) block scales, "
                         f"got dtype {weight_scale.dtype}")
    if _shape(weight_scale) != (n, k // 16):
        raise ValueError(f"{sn}: expected shape (N, K/16) = ({n}, {k // 16}) in linear order for "
                         f"{wn} of shape {_shape(weight)}, got {_shape(weight_scale)}")
    device = weight.device if device is None else torch.device(device)
    sf = weight_scale.detach().to(device)
    sf = sf if sf.dtype == torch.uint8 else sf.view(torch.uint8)
    if bool(((sf & 0x7F) == 0x7F).any()):  # 0x7F / 0xFF: E4M3 NaN
        raise ValueError(f"{sn}: holds NaN block scales (E4M3 bytes 0x7f/0xff)")
    if bool((sf >= 0x80).any()):  # the kernels take scales as magnitudes: a sign would be lost or flip blocks
        raise ValueError(f"{sn}: holds negative block scales (E4M3 bytes with the sign bit set); "
                         "NVFP4 block scales are positive")
    s2 = _scalar(weight_scale_2, s2n)
    s_in = _scalar(input_scale, isn) if input_scale is not None else None
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point() or _shape(bias) != (n,):
            got = f"{bias.dtype} {_shape(bias)}" if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"{bn}: expected a floating (N,) = ({n},) tensor, got {got}")
    if bias_dtype is None:
        bias_dtype = bias.dtype if bias is not None else torch.bfloat16
    act_scale = "static" if (s_in is not None and activations == "fp4") else "dynamic"
    m = Fp4Linear(k, n, bias is not None, "nvfp4", backend, "128x4", act_scale, device=device,
                  dtype=bias_dtype, **extra)
    state = {"weight_fp4": weight.detach().to(device),
             "weight_scale": swizzle_scales(sf, "128x4"),
             "weight_global_scale": _inverse_f32(s2, s2n).to(device)}
    if bias is not None:
        state["bias"] = bias.detach()
    # load_state_dict copies into the buffers and runs the layer's post-load hook
    unexpected = m.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:  # Fp4Linear renamed a buffer: this module must follow
        raise RuntimeError(f"fp4core.pytorch.checkpoint: Fp4Linear has no buffers {unexpected}")
    if s_in is not None:
        if activations == "fp4":
            m.set_input_global_scale(_inverse_f32(s_in, isn))
        else:
            log.info("fp4core.pytorch.checkpoint: %s ignored: activations=%r layers do not quantize "
                     "their input", isn, activations)
    return m


def fp4linear_from_modelopt(weight: torch.Tensor, weight_scale: torch.Tensor,
                            weight_scale_2: torch.Tensor, input_scale: torch.Tensor | None = None,
                            bias: torch.Tensor | None = None, *, backend: str = "auto",
                            activations: str = "fp4") -> Fp4Linear:
    """An ``Fp4Linear`` from one ModelOpt NVFP4 linear layer's tensors.

    The layer lives on ``weight``'s device; the other tensors are moved there.

    Args:
        weight: uint8 (N, K/2), packed E2M1 codes (element 2i in the low nibble), K a multiple
            of 16. ``torch.float4_e2m1fn_x2`` is accepted as the same bytes.
        weight_scale: float8_e4m3fn (N, K/16), or its bytes as uint8, per-block scales in
            linear (row-major) order; swizzled into fp4core's 128x4 layout.
        weight_scale_2: float scalar or (1,), ModelOpt's per-tensor DEQUANTIZATION scale
            (``amax(|W|) / (6 * 448)``): the layer's ``weight_global_scale`` becomes
            ``1 / weight_scale_2`` (float32).
        input_scale: float scalar or (1,), ``amax(|x|) / (6 * 448)`` from calibration, or None.
            Given (and ``activations="fp4"``): ``act_scale="static"`` with
            ``input_global_scale = 1 / input_scale``; None: ``act_scale="dynamic"`` (each
            input's own amax).
        bias: floating (N,) or None; kept in its dtype.
        backend: the layer's fp4core backend ("auto" or a name).
        activations: "fp4" (W4A4: the input is quantized to NVFP4) or "bf16" (W4A16: weight
            only, the input is not quantized; needs an ``Fp4Linear`` with an ``activations``
            argument, else NotImplementedError). ``input_scale`` is ignored for "bf16".

    Returns:
        ``Fp4Linear(K, N)`` (format "nvfp4", act_sf_layout "128x4") whose
        ``dequantized_weight()`` is ``e2m1 * weight_scale * weight_scale_2`` up to the float32
        rounding of ``1 / weight_scale_2``. Without a bias its bias dtype is bfloat16.

    Raises:
        ValueError: a tensor of the wrong dtype or shape, N/K inconsistent between ``weight``
            and ``weight_scale``, K not a multiple of 16, a scale that is not one positive
            finite value, NaN block scales, or an unknown ``activations``; the message names
            the tensor and gives expected vs got.
        TypeError: a tensor argument that is not a tensor.
        NotImplementedError: ``activations="bf16"`` with an ``Fp4Linear`` that has no
            ``activations`` argument.
    """
    names = {k: k for k in (*_PARTS, "bias")}
    return _convert(weight, weight_scale, weight_scale_2, input_scale, bias, backend, activations, names)


def _read_source(source) -> dict[str, torch.Tensor]:
    """A state dict, or the tensors of a ``.safetensors`` file / of every ``.safetensors`` file
    of a directory (a sharded checkpoint), on the CPU."""
    if isinstance(source, Mapping):
        return dict(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError("source: expected a state dict (name -> tensor) or a path to a .safetensors "
                        f"file, got {type(source).__name__}")
    path = os.fspath(source)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"source: no .safetensors file in directory {path!r}")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"source: no such file or directory: {path!r}")
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise ImportError("load_modelopt_checkpoint: reading .safetensors files needs the safetensors "
                          "package: pip install safetensors (or pip install 'fp4core[checkpoints]')") from e
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        part = load_file(f, device="cpu")
        dup = tensors.keys() & part.keys()
        if dup:
            raise ValueError(f"source: tensor {sorted(dup)[0]!r} appears in more than one file of {path!r}")
        tensors.update(part)
    return tensors


def _key(prefix: str, part: str) -> str:
    return f"{prefix}.{part}" if prefix else part


def _list(names, limit: int = 20) -> str:
    names = list(names)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_modelopt_checkpoint(model: nn.Module, source, *, activations: str = "fp4", backend: str = "auto",
                             strict: bool = True) -> list[str]:
    """Load a ModelOpt NVFP4 checkpoint into ``model``, turning its NVFP4 linears into ``Fp4Linear``.

    Every ``nn.Linear`` submodule (subclasses included) whose name ``prefix`` has
    ``prefix.weight`` uint8, ``prefix.weight_scale`` and ``prefix.weight_scale_2`` in
    ``source`` is replaced, in place, by ``fp4linear_from_modelopt`` of those tensors (with
    ``prefix.input_scale`` when present, and ``prefix.bias`` when present, else the module's own
    bias), on the linear's device (the checkpoint tensor's device for a linear on the meta
    device). Every other tensor of ``source`` is loaded into the rest of the model with
    ``model.load_state_dict(..., strict=False)`` semantics.

    Args:
        model: the float model, built with the checkpoint's module names (e.g. the
            Hugging Face model the checkpoint was exported from). Not an ``nn.Linear`` itself.
        source: a state dict (name -> tensor), or a path to a ``.safetensors`` file or to a
            directory whose ``.safetensors`` files together form the checkpoint (read with the
            ``safetensors`` package: ``pip install 'fp4core[checkpoints]'``).
        activations: "fp4" (W4A4) or "bf16" (W4A16, weight only), for every replaced layer
            (see ``fp4linear_from_modelopt``).
        backend: the replaced layers' fp4core backend.
        strict: raise (before changing the model) when a source tensor would go unused or an
            NVFP4 linear lacks one of its parts. With False those are logged; an incomplete
            NVFP4 linear is then left as it is and its tensors are not loaded.

    Returns:
        The qualified names of the replaced modules, in ``model.named_modules()`` order.

    Raises:
        RuntimeError: ``strict=True`` and unused source keys or incomplete NVFP4 linears (the
            message lists them).
        ValueError / TypeError: a bad tensor (the message names its checkpoint key), a weight
            whose shape does not match its ``nn.Linear``, or ``model`` being an ``nn.Linear``.
        ImportError: a path was given and ``safetensors`` is not installed.
        NotImplementedError: ``activations="bf16"`` unsupported by this ``Fp4Linear``.
    """
    if activations not in _ACTIVATIONS:
        raise ValueError(f"activations: expected one of {_ACTIVATIONS}, got {activations!r}")
    if activations != "fp4" and not _supports_activations():
        raise NotImplementedError(
            f"activations={activations!r}: this fp4core's Fp4Linear has no 'activations' argument, "
            "so it cannot build weight-only (W4A16) layers; load with activations='fp4' (W4A4)")
    if isinstance(model, nn.Linear):
        raise ValueError("model: is itself an nn.Linear, which cannot be replaced in place; "
                         "use fp4linear_from_modelopt")
    tensors = _read_source(source)
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"source[{name!r}]: expected a torch.Tensor, got {type(t).__name__}")

    used: set[str] = set()
    incomplete: list[str] = []
    plan: list[tuple[str, nn.Linear]] = []
    for prefix, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        w = tensors.get(_key(prefix, "weight"))
        w_is_fp4 = w is not None and w.dtype == torch.uint8
        markers = [p for p in _NVFP4_MARKERS if _key(prefix, p) in tensors]
        if not w_is_fp4 and not markers:
            continue  # a float (or other) linear: plain load_state_dict
        if w_is_fp4 and len(markers) == len(_NVFP4_MARKERS):
            plan.append((prefix, mod))
            continue
        # marked NVFP4 (uint8 weight or a scale) but not all of weight uint8 / both scales
        missing = [_key(prefix, p) for p in _NVFP4_MARKERS if p not in markers]
        if w is None:
            missing.insert(0, _key(prefix, "weight"))
        elif not w_is_fp4:
            missing.insert(0, f"{_key(prefix, 'weight')} as uint8 (got {w.dtype})")
        incomplete.append(f"{prefix or '<model>'} (missing {', '.join(missing)})")
        # never copy NVFP4 parts into a float module
        used.update(k for k in (_key(prefix, p) for p in (*_PARTS, "bias")) if k in tensors)

    replaced_prefixes = [p for p, _ in plan]
    for prefix in replaced_prefixes:
        used.update(k for k in (_key(prefix, p) for p in (*_PARTS, "bias")) if k in tensors)
    rest = {k: v for k, v in tensors.items() if k not in used}
    inside = tuple(p + "." for p in replaced_prefixes)
    current = model.state_dict()
    expected = {k for k in current if not k.startswith(inside)}
    unused = sorted(k for k in rest if k not in expected)
    for k in sorted(set(rest) & expected):  # before any module is swapped: a bad shape leaves the model as it was
        if isinstance(rest[k], torch.Tensor) and tuple(rest[k].shape) != tuple(current[k].shape):
            raise ValueError(f"{k}: the model's tensor has shape {tuple(current[k].shape)}, the checkpoint's "
                             f"{tuple(rest[k].shape)}")
    if strict and (unused or incomplete):
        parts = []
        if incomplete:
            parts.append(f"NVFP4 linears with missing parts: {_list(incomplete)}")
        if unused:
            parts.append(f"source keys not used by the model: {_list(unused)}")
        raise RuntimeError("load_modelopt_checkpoint (strict=True): " + "; ".join(parts))

    # convert everything first, so a bad tensor leaves the model untouched
    new: list[tuple[str, Fp4Linear]] = []
    for prefix, lin in plan:
        get = lambda p: tensors.get(_key(prefix, p))  # noqa: E731
        w = get("weight")
        if _shape(w) != (lin.out_features, lin.in_features // 2) or lin.in_features % 2:
            raise ValueError(f"{_key(prefix, 'weight')}: expected shape (out_features, in_features/2) = "
                             f"({lin.out_features}, {lin.in_features / 2:g}) for nn.Linear {prefix!r} "
                             f"({lin.in_features} -> {lin.out_features}), got {_shape(w)}")
        device = lin.weight.device if lin.weight.device.type != "meta" else w.device
        bias = get("bias")
        if bias is None and lin.bias is not None:
            if lin.bias.device.type == "meta":
                raise ValueError(f"{_key(prefix, 'bias')}: nn.Linear {prefix!r} has a bias on the meta "
                                 "device and the checkpoint has none to load")
            bias = lin.bias.detach().clone()
        bias_dtype = None
        if bias is None:
            bias_dtype = lin.weight.dtype if lin.weight.is_floating_point() else torch.bfloat16
        names = {p: _key(prefix, p) for p in (*_PARTS, "bias")}
        new.append((prefix, _convert(w, get("weight_scale"), get("weight_scale_2"), get("input_scale"),
                                     bias.to(device) if bias is not None else None, backend, activations,
                                     names, bias_dtype=bias_dtype, device=device)))
    for prefix, layer in new:
        parent_name, _, child = prefix.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)

    result = model.load_state_dict(rest, strict=False)
    if unused:
        log.info("fp4core.pytorch.checkpoint: %d source keys not used: %s", len(unused), _list(unused))
    if incomplete:
        log.info("fp4core.pytorch.checkpoint: NVFP4 linears with missing parts left as they are: %s",
                 _list(incomplete))
    missing = [k for k in result.missing_keys if not k.startswith(inside)]
    if missing:
        log.info("fp4core.pytorch.checkpoint: %d model keys not in the checkpoint (kept): %s",
                 len(missing), _list(missing))
    log.info("fp4core.pytorch.checkpoint: replaced %d nn.Linear by Fp4Linear (activations=%s)",
             len(new), activations)
    return replaced_prefixes
