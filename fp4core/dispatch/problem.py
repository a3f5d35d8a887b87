"""What a backend is asked to compute: the problem description and its operands."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from fp4core.formats.fp4 import Fp4Format
from fp4core.formats.layouts import SfLayout


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """The device a problem runs on. ``capability`` is None on the CPU; ``sm_count`` (the
    number of streaming multiprocessors, for grid sizing such as split-K) is None where it
    is unknown (the CPU, hypothetical devices)."""

    type: str
    index: int | None
    name: str
    capability: tuple[int, int] | None
    sm_count: int | None = None

    @property
    def is_cuda(self) -> bool:
        return self.type == "cuda"

    @property
    def sm(self) -> int:
        """Compute capability as one number (90 for SM90), 0 on the CPU."""
        return 0 if self.capability is None else self.capability[0] * 10 + self.capability[1]

    def __str__(self) -> str:
        if self.capability is None:
            return self.name
        return f"{self.name} (sm_{self.sm})"


@functools.lru_cache(maxsize=None)
def _device_info(type_: str, index: int | None) -> DeviceInfo:
    if type_ != "cuda":
        return DeviceInfo(type_, index, type_, None)
    idx = torch.cuda.current_device() if index is None else index
    props = torch.cuda.get_device_properties(idx)
    return DeviceInfo("cuda", idx, props.name, (props.major, props.minor), props.multi_processor_count)


_INTERNED: dict[tuple, "Problem"] = {}
_ACTIVATION_NAMES = {None: "fp4", torch.bfloat16: "bf16", torch.float16: "fp16"}


def problem_of(m: int, n: int, k: int, fmt: Fp4Format, out_dtype: torch.dtype, a_sf_layout: SfLayout,
               has_alpha: bool, device: torch.device, prepared: bool,
               act_dtype: torch.dtype | None = None) -> "Problem":
    """The Problem of a call, one shared object per distinct description (so the selector's
    memo finds it by identity). ``device`` is the operands' torch device; ``act_dtype`` None
    for FP4 activations, bf16/fp16 for weight-only calls."""
    key = (m, n, k, fmt, out_dtype, a_sf_layout, has_alpha, device, prepared, act_dtype)
    p = _INTERNED.get(key)
    if p is None:
        if len(_INTERNED) > 8192:  # many distinct shapes: start over rather than grow forever
            _INTERNED.clear()
        p = _INTERNED[key] = Problem(m, n, k, fmt, out_dtype, a_sf_layout, has_alpha,
                                     device_info(device), prepared, act_dtype)
    return p


def device_info(device: torch.device | str | None = None) -> DeviceInfo:
    """DeviceInfo for ``device`` (default: the current CUDA device if any, else the CPU)."""
    if type(device) is torch.device and (device.index is not None or device.type != "cuda"):
        return _device_info(device.type, device.index)  # the per-call path: a tensor's device
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _device_info(device.type, device.index)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One FP4 GEMM problem: ``out (m, n) = alpha * dequant(A) (m, k) @ dequant(B) (n, k)^T``.

    Attributes:
        m, n, k: sizes in elements (k counts FP4 values, not bytes). ``m`` is None when the
            problem describes a weight being prepared for any M (the ``prepare`` hook).
        fmt: NVFP4 or MXFP4.
        out_dtype: torch.bfloat16 or torch.float16.
        a_sf_layout: layout of A's scales, 128x4 or 8x4. B's canonical scales are 128x4.
        has_alpha: whether an alpha tensor is passed.
        device: where the operands live.
        prepared: True when B comes from ``fp4core.prepare`` (the backend gets the weight
            in the layout its own ``prepare`` hook produced).
        act_dtype: None when A is packed FP4 with block scales (W4A4, ``mm_fp4``); torch.bfloat16
            or torch.float16 when A is a plain (m, k) activation (W4A16, ``mm_bf16_fp4``: no
            A scales, ``a_sf_layout`` unused). A backend sees such problems only when its
            ``BackendInfo.activations`` names that dtype.
    """

    m: int | None
    n: int
    k: int
    fmt: Fp4Format
    out_dtype: torch.dtype
    a_sf_layout: SfLayout
    has_alpha: bool
    device: DeviceInfo
    prepared: bool = False
    act_dtype: torch.dtype | None = None

    @property
    def block_size(self) -> int:
        return self.fmt.block_size

    @property
    def activation(self) -> str:
        """What A is: "fp4" (packed codes + block scales), "bf16" or "fp16" (weight-only)."""
        return _ACTIVATION_NAMES[self.act_dtype]

    def with_m(self, m: int | None) -> "Problem":
        return dataclasses.replace(self, m=m)

    def __hash__(self) -> int:
        # computed once: problems are dict keys on every call (the selector's memo)
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.m, self.n, self.k, self.fmt, self.out_dtype, self.a_sf_layout,
                      self.has_alpha, self.device, self.prepared, self.act_dtype))
            object.__setattr__(self, "_hash", h)
        return h

    @functools.cached_property
    def plain(self) -> "Problem":
        """This problem with ``prepared=False``: what a backend without a ``prepare`` hook
        sees (it takes the canonical weight either way). Computed once per problem."""
        return dataclasses.replace(self, prepared=False) if self.prepared else self

    @functools.cached_property
    def as_prepared(self) -> "Problem":
        """This problem with ``prepared=True`` (computed once per problem)."""
        return self if self.prepared else dataclasses.replace(self, prepared=True)

    def describe(self) -> str:
        m = "any" if self.m is None else self.m
        dt = str(self.out_dtype).replace("torch.", "")
        act = (f"a_sf={self.a_sf_layout.value}" if self.act_dtype is None else f"a={self.activation}")
        return (f"{m}x{self.n}x{self.k} {self.fmt.value} {act} "
                f"out={dt}{' prepared' if self.prepared else ''} on {self.device}")


@dataclasses.dataclass
class Operands:
    """The tensors of one call, as a backend's ``run`` receives them.

    Canonical form (what ``mm_fp4`` builds from FlashInfer-style arguments, zero-copy):
        a: uint8 (m, k/2), row-major packed E2M1 codes.
        a_scale: uint8 1-D, A's scale bytes in ``problem.a_sf_layout`` order.
        b: uint8 (n, k/2), row-major packed codes of the weight (FlashInfer's ``b.T``).
        b_scale: uint8 1-D, B's scale bytes in 128x4 order over (n, k/block).
        alpha: float32 tensor of one element, or None (meaning 1).
        extra: backend-specific data added by the backend's own ``prepare`` hook.
    After ``prepare``, ``b``, ``b_scale`` and ``extra`` hold whatever that backend's hook
    returned.
    """

    a: torch.Tensor | None
    a_scale: torch.Tensor | None
    b: torch.Tensor
    b_scale: torch.Tensor
    alpha: torch.Tensor | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def with_activation(self, a: torch.Tensor, a_scale: torch.Tensor,
                        alpha: torch.Tensor | None) -> "Operands":
        return Operands(a, a_scale, self.b, self.b_scale, alpha, self.extra)
