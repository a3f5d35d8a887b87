"""What every GPU backend needs besides its kernels, owned by the core so plugins don't copy it.

* ``device_buffers(device).get(name, numel, dtype)``: named scratch buffers (split-K
  partials, counters, dequantized operands, library workspaces) that grow and are never freed
  while the process lives. A CUDA graph captured earlier keeps the address it saw, so a
  buffer replaced by a larger one is retired, not released: freeing it would let the caching
  allocator hand its memory to someone else while a graph still writes there.
* ``raw_stream(index)``: the current stream as an integer handle, for ctypes launches.
* ``sm_count(index)``, ``smem_per_sm(index)``: device properties, cached.
* ``arch_for(capability)``: the nvcc target of a device (the ``a`` variants where the
  architecture-specific instructions live: wgmma, tcgen05).
* ``nvcc_missing()``: "" when nvcc is found, else the message a ``supports`` hook returns.
* ``fp4core.kit.pdl``: whether to launch with programmatic dependent launch (SM90+), and the
  kernels' side of it in ``fp4core/kit/include/fp4core/pdl.cuh`` (on every JIT build's path).

All calls on one device share its buffers (a name per use: prefix it with the plugin), as
FlashInfer shares its workspace: two streams of one device running the same backend at the
same time would race on them.
"""

from __future__ import annotations

import functools
import threading

import torch

#: fallbacks for a problem described on a hypothetical device (no CUDA here)
DEFAULT_SM_COUNT = 132
DEFAULT_SMEM_PER_SM = 228 * 1024

NVCC_MISSING = ("nvcc (CUDA compiler) not found: the kernels are compiled on first use; install a "
                "CUDA toolkit and put nvcc on PATH or set CUDA_HOME")


class CaptureGrowthError(RuntimeError):
    """A buffer had to grow while a CUDA graph was being captured, where that was refused."""


class DeviceBuffers:
    """The named, grow-only scratch buffers of one CUDA device (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}
        self._retired: dict[str, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def get(self, name: str, numel: int, dtype: torch.dtype, *, minimum: int = 0, zeroed: bool = False,
            round_pow2: bool = False, grow_in_capture: bool = True) -> torch.Tensor:
        """The 1-D buffer ``name`` with at least ``numel`` elements of ``dtype`` (the whole
        buffer, possibly larger; its start is 256-byte aligned).

        Args:
            name: which buffer ("trtllm.partials"); one dtype per name.
            numel: elements needed now.
            minimum: the smallest size ever allocated (fewer regrowths for small calls).
            zeroed: a new buffer starts as zeros (e.g. arrival counters that kernels leave
                at zero); an existing one is returned as it is.
            round_pow2: grow to the next power of two (a sweep over M regrows a few times).
            grow_in_capture: False raises CaptureGrowthError instead of allocating while the
                current stream captures a CUDA graph (for allocations that capture cannot
                take); True allocates from the graph's pool, which the buffer then keeps.
        """
        buf = self._buffers.get(name)
        if buf is not None and buf.numel() >= numel and buf.dtype == dtype:
            return buf
        if not grow_in_capture and torch.cuda.is_current_stream_capturing():
            raise CaptureGrowthError(
                f"buffer {name!r} on {self.device} must grow to {numel} elements inside CUDA-graph capture; "
                "run this problem shape once before capturing")
        with self._lock:
            buf = self._buffers.get(name)
            if buf is not None and buf.dtype != dtype:
                raise TypeError(f"buffer {name!r} holds {buf.dtype}, asked for {dtype}")
            if buf is None or buf.numel() < numel:
                if buf is not None:
                    self._retired.setdefault(name, []).append(buf)  # a captured graph may still use it
                size = max(int(numel), int(minimum), 1)
                if round_pow2:
                    size = 1 << (size - 1).bit_length()
                make = torch.zeros if zeroed else torch.empty
                buf = make(size, dtype=dtype, device=self.device)
                self._buffers[name] = buf
            return buf

    def release(self, prefix: str = "") -> None:
        """Free the buffers whose names start with ``prefix`` (all by default), retired ones
        included. Only safe when no captured graph that used them is replayed again."""
        with self._lock:
            for table in (self._buffers, self._retired):
                for name in [n for n in table if n.startswith(prefix)]:
                    del table[name]


_devices: dict[int, DeviceBuffers] = {}
_devices_lock = threading.Lock()


def device_buffers(device: torch.device | int) -> DeviceBuffers:
    """The buffers of ``device`` (a CUDA device or its index; None index: the current one)."""
    idx = device if isinstance(device, int) else device.index
    if idx is None:
        idx = torch.cuda.current_device()
    bufs = _devices.get(idx)  # one dict lookup on the hot path
    if bufs is None:
        with _devices_lock:
            bufs = _devices.setdefault(idx, DeviceBuffers(torch.device("cuda", idx)))
    return bufs


_get_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def raw_stream(index: int) -> int:
    """The current CUDA stream of device ``index`` as an integer handle (cudaStream_t)."""
    # the C++ accessor avoids building a torch.cuda.Stream object per call
    if _get_raw_stream is not None:
        return _get_raw_stream(index)
    return torch.cuda.current_stream(index).cuda_stream


@functools.lru_cache(maxsize=None)
def sm_count(index: int | None) -> int:
    """Multiprocessors of device ``index`` (DEFAULT_SM_COUNT without CUDA or index)."""
    if index is None or not torch.cuda.is_available():
        return DEFAULT_SM_COUNT
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=None)
def smem_per_sm(index: int | None) -> int:
    """Shared memory bytes per multiprocessor (DEFAULT_SMEM_PER_SM without CUDA or index)."""
    if index is None or not torch.cuda.is_available():
        return DEFAULT_SMEM_PER_SM
    return getattr(torch.cuda.get_device_properties(index), "shared_memory_per_multiprocessor",
                   DEFAULT_SMEM_PER_SM)


def arch_for(capability: tuple[int, int]) -> str:
    """The nvcc target of a device of ``capability`` (major, minor): the 'a' variant on
    SM90/SM100/SM103/SM120/SM121, e.g. "sm_90a", else the plain one, e.g. "sm_80"."""
    major, minor = capability
    cc = major * 10 + minor
    return f"sm_{cc}a" if cc in (90, 100, 103, 120, 121) else f"sm_{cc}"


@functools.lru_cache(maxsize=1)
def nvcc_missing() -> str:
    """"" when nvcc is found (``fp4core.kit.jit.nvcc_path``), else ``NVCC_MISSING``."""
    from fp4core.kit.jit import nvcc_path
    return "" if nvcc_path() is not None else NVCC_MISSING
