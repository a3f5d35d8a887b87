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
