"""Process-wide state: the backend registry and the tuning cache."""

from __future__ import annotations

from fp4core.dispatch.registry import Registry
from fp4core.dispatch.tuning_cache import TuningCache


def _builtin_backends() -> list:
    from fp4core.dispatch.torch_backend import TorchBackend

    return [TorchBackend()]


registry = Registry(builtins=_builtin_backends)
tuning_cache = TuningCache()
