"""GPU kernels of the core package (Triton), imported lazily.

Nothing here is imported by ``import fp4core``: ``quantize_kernels()`` imports the Triton
module on first use and only when CUDA and Triton are both present, so CPU-only installs
never touch Triton. ``FP4CORE_QUANT_KERNEL=torch`` forces the torch reference quantizers.
"""

from __future__ import annotations

import os
from types import ModuleType

ENV_QUANT_KERNEL = "FP4CORE_QUANT_KERNEL"
_state: dict[str, object] = {}


def quantize_kernels() -> ModuleType | None:
    """The Triton quantization module, or None when it cannot be used here.

    None when CUDA or Triton is missing, when ``FP4CORE_QUANT_KERNEL=torch``, or when the
    import failed (the reason is kept in ``unavailable_reason()``).
    """
    if os.environ.get(ENV_QUANT_KERNEL, "").strip().lower() == "torch":
        return None
    if "module" not in _state:
        _state["module"] = None
        try:
            import torch
            if not torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET"):
                _state["reason"] = "no CUDA device"
            else:
                from fp4core.formats.kernels import quantize_triton
                _state["module"] = quantize_triton
        except Exception as exc:  # no triton, or a broken install: the torch path still works
            _state["reason"] = f"{type(exc).__name__}: {exc}"
    return _state["module"]  # type: ignore[return-value]


def unavailable_reason() -> str:
    """Why ``quantize_kernels()`` returned None ("" when it did not)."""
    quantize_kernels()
    return str(_state.get("reason", ""))
