"""The FP4 formats: E2M1 codes, block scales and their layouts, quantization and the exact reference."""
