"""Programmatic dependent launch (PDL, SM90+): may a kernel start before the one ahead of it
on the stream has finished?

A kernel launched with PDL may be scheduled while the kernel ahead of it drains. It does
only work that cannot depend on that kernel before it waits (``griddepcontrol.wait``, see
``fp4core/kit/include/fp4core/pdl.cuh``): index math and the prefetch of the weight, which
nothing writes between calls. Activations, outputs, workspaces and counters are touched after
the wait, which returns once the kernel ahead has finished and its writes are visible. So PDL
changes when work starts, never a result; in CUDA-graph replay it hides the gap between
back-to-back kernels.

On by default on SM90+ devices. ``FP4CORE_PDL=0`` turns it off for the process (for A/B
measurements, or a driver that mishandles it); ``with fp4core.kit.pdl.override(False):`` turns
it off for the calls of one thread (what ``mm_bf16_fp4(enable_pdl=False)`` does). A backend's
launcher asks ``enabled(device_index)`` at each launch and passes the answer to its kernels,
which were built to honour it (``pdl.cuh``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from typing import Iterator

import torch

from fp4core.env import env_flag

ENV = "FP4CORE_PDL"


class _Override(threading.local):
    value: bool | None = None


_override = _Override()


@functools.lru_cache(maxsize=1)
def process_default() -> bool:
    """``FP4CORE_PDL`` (on when unset or empty; read once per process)."""
    if os.environ.get(ENV, "").strip() == "":
        return True
    return env_flag(ENV)


@functools.lru_cache(maxsize=None)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def enabled(index: int) -> bool:
    """Whether kernels launched now on CUDA device ``index`` should use PDL: the thread's
    override if one is active, else the process default, and only on SM90+."""
    on = _override.value
    if on is None:
        on = process_default()
    return on and _capable(index)


@contextlib.contextmanager
def override(on: bool) -> Iterator[None]:
    """Force PDL on (``True``: still only on SM90+) or off for the launches of this thread
    inside the block; the previous setting is restored after it (blocks nest)."""
    if not isinstance(on, bool):
        raise TypeError(f"on: expected a bool, got {type(on).__name__}")
    before = _override.value
    _override.value = on
    try:
        yield
    finally:
        _override.value = before
