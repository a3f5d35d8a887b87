"""Shared pytest setup for fp4core and its backend plugins (third parties included).

Enable it from a plugin's top-level ``conftest.py``::

    pytest_plugins = ["fp4core.pytest_plugin"]

It provides:

* the ``gpu`` marker: tests marked ``@pytest.mark.gpu`` are skipped when no CUDA device is
  visible, so one test suite serves CPU CI and the GPU machine;
* an autouse fixture giving every test a private, empty tuning cache (the
  ``FP4CORE_TUNING_CACHE`` file under the test's tmp_path) and no ``FP4CORE_AUTOTUNE``, so
  tests never read or write the user's cache and never depend on each other's tuning.
"""

from __future__ import annotations

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fp4core_isolated_tuning_cache(tmp_path, monkeypatch):
    from fp4core.dispatch.selector import selector

    monkeypatch.setenv("FP4CORE_TUNING_CACHE", str(tmp_path / "tuning.json"))
    monkeypatch.delenv("FP4CORE_AUTOTUNE", raising=False)
    selector.cache.clear()
    yield
    selector.cache.clear()
