"""Programmatic dependent launch (PDL, SM90+): may a kernel start before the one ahead of it
on the stream has finished?

A kernel launched with PDL may be scheduled while the kernel ahead of it drains. It does
only work that cannot depend on that kernel before it waits (``griddepcontrol.wait``, see
``fp4core/kit/include/fp4core/pdl.cuh``): index math and the prefetch of the weight, which
nothing writes between calls. Activations, outputs, workspaces and counters are touched after
the wait, which returns once the kernel ahead has finished and its writes are visible. So PDL
changes when work starts, never a result; in CUDA-graph replay it hides the gap between
back-to-back kernels.

Off by default for now: the kernels' side has not yet run on a GPU (no device could be had in
the sessions since it was written), so ``FP4CORE_PDL=1`` opts in for the process and
``with fp4core.kit.pdl.override(True):`` for the calls of one thread (both on SM90+ devices
only); ``override(False)`` turns it off for a thread (what ``mm_bf16_fp4(enable_pdl=False)``
does). The GPU tests (``test_pdl_*``, ``fp4core.testing.check_back_to_back``) force it on. A backend's
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
    """``FP4CORE_PDL`` (off when unset or empty; read once per process)."""
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
