"""What this process can use: the cuDNN frontend, the cuDNN library it loads, and Triton.

Everything is imported lazily and the answers are cached, because ``supports`` must be cheap
and must work on machines without a GPU, without libcudnn and without Triton (CPU CI).
"""

from __future__ import annotations

import functools
from typing import Any

#: Oldest cuDNN (``cudnnGetVersion()``, e.g. 91900 for 9.19.0) per path.
#: - bf16 matmul graph with a fused pointwise epilogue (the SM80-SM90 path): cuDNN 9.0.
#: - block-scaled FP4 matmul graphs (the SM100+ path): NVFP4/MXFP4 block_scale_dequantize
#:   arrived in cuDNN 9.7 for SM100; FlashInfer gates MXFP4 on SM120 on a newer cuDNN. We use
#:   9.14 there; that number is our assumption, not measured (no SM120 here).
MIN_CUDNN_DEQUANT_PATH = 90000
MIN_CUDNN_NATIVE_SM100 = 90700
MIN_CUDNN_NATIVE_SM120_MXFP4 = 91400


class Unavailable(RuntimeError):
    """A dependency this backend needs cannot be used; the message says which and why."""


@functools.lru_cache(maxsize=None)
def _import_cudnn() -> tuple[Any, str]:
    try:
        import torch  # noqa: F401  (load torch first: its libcudnn then satisfies the frontend's dlopen)
        import cudnn
    except Exception as exc:  # ImportError, or a broken binary wheel
        return None, f"the cuDNN frontend (pip install nvidia-cudnn-frontend) is not importable: " \
                     f"{type(exc).__name__}: {exc}"
    return cudnn, ""


def cudnn_module():
    """The imported ``cudnn`` frontend module; raises Unavailable with the reason."""
    mod, why = _import_cudnn()
    if mod is None:
        raise Unavailable(why)
    return mod


@functools.lru_cache(maxsize=None)
def _cudnn_version() -> tuple[int | None, str]:
    mod, why = _import_cudnn()
    if mod is None:
        return None, why
    try:
        return int(mod.backend_version()), ""
    except Exception as exc:  # libcudnn.so not found / symbol missing
        return None, f"the cuDNN library could not be loaded by the frontend: {type(exc).__name__}: {exc}"


def cudnn_version() -> int | None:
    """``cudnnGetVersion()`` of the loaded library (e.g. 91900), or None if unusable."""
    return _cudnn_version()[0]


def cudnn_problem() -> str:
    """Empty when cuDNN is usable, else why not."""
    return _cudnn_version()[1]


def format_version(v: int) -> str:
    """91900 -> '9.19.0' (cuDNN 9 encodes major*10000 + minor*100 + patch)."""
    return f"{v // 10000}.{(v % 10000) // 100}.{v % 100}"


@functools.lru_cache(maxsize=None)
def _import_triton() -> tuple[Any, str]:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:
        return None, f"triton is not importable ({type(exc).__name__}: {exc}); the SM80-SM90 path " \
                     f"dequantizes with a Triton kernel"
    return triton, ""


def triton_problem() -> str:
    """Empty when Triton is importable, else why not."""
    return _import_triton()[1]
