"""Per-device resources: cuDNN handles and cached device buffers.

Buffers (the bf16 dequantization targets of A and B, the cuDNN workspace) are the core's
grow-only device buffers (``fp4core.kit``), named ``cudnn.*``: grown only when a
larger problem arrives (sizes rounded up to a power of two so a sweep over M grows them a few
times, not every call) and never freed while the process runs, since a CUDA graph captured
earlier keeps pointing at the buffer it saw.

All calls on one device share these buffers, as FlashInfer's workspace is shared: calls from
several streams of one device at the same time would race on them. A handle is kept per
(device, stream); inside CUDA-graph capture no new handle is created (cudnnCreate is not a
capturable operation) and the device's first handle is pointed at the capturing stream.
"""

from __future__ import annotations

import threading

import torch

from fp4core import kit

from .env import cudnn_module

_lock = threading.Lock()
_handles: dict[tuple[int, int], object] = {}
_first_handle: dict[int, object] = {}


class CaptureError(RuntimeError):
    """A resource had to be created while a CUDA graph was being captured."""


def buffer(device: int, name: str, nbytes: int) -> torch.Tensor:
    """A cached uint8 buffer of at least ``nbytes`` on ``device`` (the core's grow-only device
    buffers, sizes rounded up to a power of two; 256-B aligned).

    Raises CaptureError if it must grow during CUDA-graph capture: call once eagerly first.
    """
    try:
        return kit.device_buffers(device).get(f"cudnn.{name}", max(nbytes, 256), torch.uint8,
                                                      round_pow2=True, grow_in_capture=False)
    except kit.CaptureGrowthError as exc:
        raise CaptureError(f"fp4-cudnn: {exc}") from None


def handle(device: int, stream: int):
    """The cuDNN handle for (device, stream), its stream set to ``stream``."""
    cudnn = cudnn_module()
    h = _handles.get((device, stream))
    if h is None:
        if torch.cuda.is_current_stream_capturing():
            h = _first_handle.get(device)
            if h is None:
                raise CaptureError(f"fp4-cudnn: no cuDNN handle exists for cuda:{device}; run this "
                                   f"problem once before capturing a CUDA graph")
        else:
            with _lock, torch.cuda.device(device):
                h = cudnn.create_handle()
                _handles[(device, stream)] = h
                _first_handle.setdefault(device, h)
    # Cheap when unchanged (the Handle remembers its stream); needed when a handle is shared.
    cudnn.set_stream(h, stream)
    return h


def graph_handle(device: int):
    """A handle to build graphs with (plans are not tied to the handle they were built on)."""
    h = _first_handle.get(device)
    if h is None:
        h = handle(device, kit.raw_stream(device))
    return h


def release() -> None:
    """Free this backend's cached buffers on every device (handles stay). Captured graphs that
    used them become invalid."""
    for idx in range(torch.cuda.device_count()):
        kit.device_buffers(idx).release("cudnn.")
