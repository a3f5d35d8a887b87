"""fp4core: FP4 (NVFP4 / MXFP4) block-scaled GEMM with pluggable backends.

    out = fp4core.mm_fp4(a_fp4, b_fp4.T, a_sf, b_sf.T, alpha, torch.bfloat16, backend="auto")

The call convention is FlashInfer's ``mm_fp4``. Backends are pluggy plugins registered
through the ``fp4core.backends`` entry-point group; ``torch`` is built in.
"""

__version__ = "0.1.0"

from fp4core.api import (BackendStatus, autotune, backends, build, mm_bf16_fp4, prepare_bf16_fp4_weights, explain, is_backend_supported, make_problem,
                  mm_fp4, register_backend, supported_backends, tune, unregister_backend)
from fp4core.dispatch.selector import Choice, Explanation
from fp4core.errors import (BackendError, BackendFailedError, BackendNotInstalledError, BackendUnsupportedError,
                     NoBackendError)
from fp4core.formats.fp4 import Fp4Format
from fp4core.dispatch.hooks import BackendInfo, Support, Tactic, hookimpl, hookspec
from fp4core.formats.layouts import SfLayout, swizzle_scales, unswizzle_scales
from fp4core.dispatch.prepared import PreparedWeight, prepare
from fp4core.dispatch.problem import DeviceInfo, Operands, Problem
from fp4core.formats.quantize import compute_global_scale, dequantize, mxfp4_quantize, nvfp4_quantize
from fp4core.pytorch import ops, nn  # noqa: E402  registers torch.ops.fp4core.{mm_fp4,quantize_fp4}
from fp4core.pytorch.ops import quantize_fp4

__all__ = [
    "__version__", "mm_fp4", "mm_bf16_fp4", "prepare_bf16_fp4_weights", "prepare", "build", "PreparedWeight", "autotune", "tune", "explain",
    "backends", "BackendStatus", "is_backend_supported", "supported_backends", "make_problem",
    "register_backend", "unregister_backend", "nvfp4_quantize", "mxfp4_quantize", "dequantize",
    "compute_global_scale", "quantize_fp4", "ops", "nn", "swizzle_scales", "unswizzle_scales",
    "SfLayout", "Fp4Format",
    "Problem", "Operands", "DeviceInfo", "BackendInfo", "Support", "Tactic", "hookimpl",
    "hookspec", "Choice", "Explanation", "BackendError", "BackendNotInstalledError",
    "BackendUnsupportedError", "BackendFailedError", "NoBackendError",
]
