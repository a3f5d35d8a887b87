"""One FlashInfer-style mm_fp4 call on random data, checked against the exact reference."""

import torch

import fp4core

device = "cuda" if torch.cuda.is_available() else "cpu"
m, n, k = (16, 8192, 8192) if device == "cuda" else (16, 512, 1024)
x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
gx, gw = fp4core.compute_global_scale(x), fp4core.compute_global_scale(w)
a, a_sf = fp4core.nvfp4_quantize(x, gx)
b, b_sf = fp4core.nvfp4_quantize(w, gw)
alpha = (1.0 / (gx * gw)).float()

out = fp4core.mm_fp4(a, b.T, a_sf, b_sf.T, alpha, torch.bfloat16, backend="auto")

exact = (fp4core.dequantize(a, a_sf, gx, dtype=torch.float64)
         @ fp4core.dequantize(b, b_sf, gw, dtype=torch.float64).T)
err = ((out.double() - exact).norm() / exact.norm()).item()
quant = ((out.double() - (x.double() @ w.double().T)).norm() / (x.double() @ w.double().T).norm()).item()
print(f"mm_fp4 {m}x{n}x{k} on {device}: {fp4core.explain(a, b.T, a_sf, b_sf.T, alpha).choice.backend.name}; "
      f"relative error vs exact FP4 reference {err:.2e} (must be <= 1e-2); "
      f"vs the unquantized bf16 product {quant:.2e} (4-bit quantization)")
assert err <= 1e-2
