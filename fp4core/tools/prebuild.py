"""Ahead-of-time kernel builds: ask every backend that implements the optional ``build``
hook to compile its kernels, so the first ``mm_fp4`` call never waits for nvcc."""

from __future__ import annotations

import sys

import torch

from fp4core.dispatch.selector import selector
from fp4core.kit.jit import normalize_arch

# Architectures whose "a" variant unlocks the instructions the backends use (wgmma/TMA on
# SM90, tcgen05/block-scaled MMA on SM100 and SM120).
_ARCH_SPECIFIC = {90, 100, 103, 120, 121}


def arch_of(capability: tuple[int, int]) -> str:
    """nvcc architecture name for a compute capability: (9, 0) -> "sm_90a", (8, 9) -> "sm_89"."""
    sm = capability[0] * 10 + capability[1]
    return f"sm_{sm}a" if sm in _ARCH_SPECIFIC else f"sm_{sm}"


def default_archs() -> list[str]:
    """The architectures of the visible CUDA devices (each once); raise without a GPU."""
    if not torch.cuda.is_available():
        raise ValueError("archs: no CUDA device is visible, so there is no default architecture; "
                         "name them, e.g. fp4core build --arch sm_90a --arch sm_100a")
    found = [arch_of(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]
    return list(dict.fromkeys(found))


def build(backends: list[str] | None = None, archs: list[str] | None = None,
          progress: bool = True) -> dict[str, list[str]]:
    """Prebuild kernels of installed backends for ``archs``.

    Args:
        backends: backend names (default: every loaded backend that implements ``build``).
        archs: nvcc architectures such as ``"sm_90a"`` (default: those of the visible GPUs).
        progress: print one line per backend and the backends' own build progress to stderr.

    Returns:
        ``{backend name: [one line per artifact]}``; a backend with nothing to build maps to [].

    Raises:
        ValueError: an unknown or not-loaded backend name, a malformed arch, or no arch
            given without a GPU.
        fp4core.kit.jit.JitError: a build failed (nvcc missing, compile error).
    """
    archs = [f"sm_{normalize_arch(a)}" for a in (archs or default_archs())]
    loaded = {b.name: b for b in selector.registry.backends()}
    if backends is None:
        chosen = [b for b in loaded.values() if b.can_build]
    else:
        unknown = [n for n in backends if n not in loaded]
        if unknown:
            raise ValueError(f"backends: {', '.join(map(repr, unknown))} not loaded; "
                             f"loaded: {', '.join(sorted(loaded)) or 'none'}")
        chosen = [loaded[n] for n in backends]
    results: dict[str, list[str]] = {}
    for backend in chosen:
        if progress:
            print(f"fp4core build: {backend.name} for {', '.join(archs)}", file=sys.stderr, flush=True)
        results[backend.name] = backend.build(archs, progress)
    return results
