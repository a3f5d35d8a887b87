"""torch's int4 weight-only GEMM (tinygemm, ``torch._weight_int4pack_mm``) as an ``nn.Module``:
the W4A16 baseline that ``fp4core bench --layer --w4a16`` times beside bf16 and fp4core's
weight-only layers. Group-wise asymmetric int4 (group 128 along K), the packing gpt-fast and
torchao use: ``w ~ (q - 8) * scale + zero`` with q in [0, 15]. CUDA only (tinygemm is a CUDA
kernel); building it elsewhere raises RuntimeError.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP = 128
INNER_K_TILES = 8


class TinyGemmLinear(nn.Module):
    """``y = x @ W.T`` with W in tinygemm's int4 layout. x (M, K) bfloat16 -> (M, N) bfloat16.

    Args:
        linear: the bf16 ``nn.Linear`` (no bias) to quantize; K must be a multiple of 1024
            (tinygemm's tile with ``inner_k_tiles=8``) and N of 8.
    """

    def __init__(self, linear: nn.Linear, group: int = GROUP):
        super().__init__()
        w = linear.weight.detach()
        if not w.is_cuda:
            raise RuntimeError("TinyGemmLinear: tinygemm (torch._weight_int4pack_mm) is a CUDA kernel")
        n, k = w.shape
        if k % (INNER_K_TILES * 16 * 8) or n % 8:
            raise RuntimeError(f"TinyGemmLinear: needs K % 1024 == 0 and N % 8 == 0, got N={n}, K={k}")
        wg = w.float().reshape(n, k // group, group)
        lo, hi = wg.amin(dim=2), wg.amax(dim=2)
        scales = ((hi - lo).clamp(min=1e-6) / 15)
        zeros = lo + scales * 8
        q = ((wg - lo.unsqueeze(2)) / scales.unsqueeze(2)).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        self.register_buffer("weight_int4", torch._convert_weight_to_int4pack(packed, INNER_K_TILES))
        sz = torch.stack([scales, zeros], dim=2).transpose(0, 1).contiguous().to(torch.bfloat16)
        self.register_buffer("scales_and_zeros", sz)
        self.group, self.out_features = group, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int4pack_mm(x.to(torch.bfloat16), self.weight_int4, self.group, self.scales_and_zeros)
