"""Per-device resources: cuDNN handles and cached device buffers.

Buffers (the bf16 dequantization targets of A and B, the cuDNN workspace) are allocated once
per device and name, grown only when a larger problem arrives (sizes rounded up to a power of
two so a sweep over M grows them a few times, not every call), and never freed while the
process runs: a CUDA graph captured earlier keeps pointing at the buffer it saw, so a grown
buffer's predecessor is retired but kept alive. ``release()`` frees everything (only safe when
no captured graph that used this backend will be replayed again).

All calls on one device share these buffers, as FlashInfer's workspace is shared: calls from
several streams of one device at the same time would race on them. A handle is kept per
(device, stream); inside CUDA-graph capture no new handle is created (cudnnCreate is not a
capturable operation) and the device's first handle is pointed at the capturing stream.
"""

from __future__ import annotations

import threading

import torch

from .env import cudnn_module

_lock = threading.Lock()
_buffers: dict[tuple[int, str], torch.Tensor] = {}
_retired: list[torch.Tensor] = []
_handles: dict[tuple[int, int], object] = {}
_first_handle: dict[int, object] = {}


class CaptureError(RuntimeError):
    """A resource had to be created while a CUDA graph was being captured."""


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def buffer(device: int, name: str, nbytes: int) -> torch.Tensor:
    """A cached uint8 buffer of at least ``nbytes`` on ``device`` (contiguous, 256-B aligned).

    Raises CaptureError if it must grow during CUDA-graph capture: call once eagerly first.
    """
    key = (device, name)
    buf = _buffers.get(key)
    if buf is not None and buf.numel() >= nbytes:
        return buf
    if torch.cuda.is_current_stream_capturing():
        raise CaptureError(
            f"fp4-cudnn: buffer {name!r} on cuda:{device} must grow to {nbytes} bytes inside CUDA-graph "
            f"capture; run this problem shape once before capturing")
    with _lock:
        buf = _buffers.get(key)
        if buf is None or buf.numel() < nbytes:
            if buf is not None:
                _retired.append(buf)  # a captured graph may still point at it
            buf = torch.empty(_pow2(max(nbytes, 256)), dtype=torch.uint8, device=f"cuda:{device}")
            _buffers[key] = buf
        return buf


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
        h = handle(device, torch.cuda.current_stream(device).cuda_stream)
    return h


def release() -> None:
    """Free every cached buffer (handles stay). Captured graphs that used them become invalid."""
    with _lock:
        _buffers.clear()
        _retired.clear()
