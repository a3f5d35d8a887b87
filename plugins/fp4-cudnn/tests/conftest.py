"""The ``gpu`` marker skips without CUDA; every test gets a private tuning-cache path."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_tuning_cache(tmp_path, monkeypatch):
    from fp4core import state

    monkeypatch.setenv("FP4CORE_TUNING_CACHE", str(tmp_path / "tuning.json"))
    monkeypatch.delenv("FP4CORE_AUTOTUNE", raising=False)
    state.tuning_cache.clear()
    yield
    state.tuning_cache.clear()
