"""PyTorch integration: custom ops (torch.compile, CUDA graphs), Fp4Linear and its per-M plans."""
