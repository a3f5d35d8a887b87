"""fp4-trtllm: the TensorRT-LLM-style low-latency FP4 GEMM backend for fp4core (``backend="trtllm"``).

Use it through fp4core: prepare the weight once, then call ``mm_fp4`` as usual.

    w = fp4core.prepare(b_fp4.T, b_sf.T)                 # shuffles for this backend, once
    out = fp4core.mm_fp4(a_fp4, w, a_sf, None, alpha)    # auto picks trtllm for small M

Weights shuffled by FlashInfer for its trtllm path are accepted through
``prepare_flashinfer_shuffled``.
"""

__version__ = "0.8.0"

from .layout import prepare_weight, unprepare_weight, unshuffle_flashinfer  # noqa: E402
from .flashinfer import prepare_flashinfer_shuffled  # noqa: E402

__all__ = ["__version__", "prepare_weight", "unprepare_weight", "unshuffle_flashinfer",
           "prepare_flashinfer_shuffled"]
