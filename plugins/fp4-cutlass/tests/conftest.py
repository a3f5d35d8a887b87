"""Shared fp4core test setup: the ``gpu`` marker (skipped without CUDA) and a private
tuning cache per test. See fp4core/pytest_plugin.py."""

pytest_plugins = ["fp4core.pytest_plugin"]
