"""Choosing and running a backend: the hook contract, problems, the registry, the selector, prepared weights and tuning."""
