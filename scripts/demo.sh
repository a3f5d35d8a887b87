#!/usr/bin/env bash
# Set up .venv, then show the installed backends, run one mm_fp4 call checked against the
# exact reference, and benchmark auto / every backend against bf16 torch.matmul.
# CPU: small shapes through the torch backend. With a CUDA device: the standard sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
.venv/bin/fp4core backends
.venv/bin/python benchmarks/demo.py
.venv/bin/fp4core bench "$@"
