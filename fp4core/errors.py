"""Errors users meet when choosing a backend. Bad arguments raise ValueError/TypeError."""

from __future__ import annotations


class BackendError(RuntimeError):
    """Base class for backend-selection errors."""


class BackendNotInstalledError(BackendError, LookupError):
    """The requested backend is not installed (or failed to load, or is disabled)."""


class BackendUnsupportedError(BackendError):
    """The backend is installed but refuses this problem; the message has its reason."""


class NoBackendError(BackendError):
    """``auto`` found no backend for the problem; the message lists every refusal."""


class BackendFailedError(BackendError):
    """A backend's hook raised while running a call; the message names the backend and the
    hook, and the original exception is chained as ``__cause__``."""

    def __init__(self, backend: str, hook: str, exc: BaseException):
        super().__init__(f"backend {backend!r}: {hook}() raised {type(exc).__name__}: {exc}")
        self.backend = backend
        self.hook = hook
