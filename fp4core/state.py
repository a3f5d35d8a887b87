"""Process-wide state: the backend registry and the tuning cache."""

from __future__ import annotations

from .registry import Registry
from .tuning_cache import TuningCache


def _builtin_backends() -> list:
    from .torch_backend import TorchBackend

    return [TorchBackend()]


registry = Registry(builtins=_builtin_backends)
tuning_cache = TuningCache()
