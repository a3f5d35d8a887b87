#!/usr/bin/env bash
# Create .venv (if missing) and install fp4core (with its [docs] extra: mkdocs; safetensors for the
# [checkpoints] extra's tests), every plugin
# under plugins/, the example third-party plugin examples/fp4-triton and the test tools
# (Triton included, for the interpreter tests).
# Torch: an already-importable torch is kept (e.g. a CUDA build); otherwise torch==2.13.0
# (the CPU wheel this workplace has on disk; set FP4CORE_TORCH to choose another spec).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip -q --disable-pip-version-check"
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install "${FP4CORE_TORCH:-torch==2.13.0}"
# numpy < 2.4: Triton's interpreter converts one-element arrays with int(), which 2.4 refuses.
$PIP install setuptools pluggy pytest "numpy<2.4"
# safetensors: the [checkpoints] extra, so the tests read real ModelOpt-style .safetensors files
$PIP install safetensors
# Triton runs the kernels' arithmetic on the CPU in its interpreter (TRITON_INTERPRET=1), so CI
# checks the GPU kernels' bytes without a GPU; without it those tests skip.
$PIP install "triton==3.6.0" || echo "triton not installed: the Triton-interpreter tests will skip"
$PIP install --no-build-isolation -e ".[docs]"
for p in plugins/*/; do
  [ -f "$p/pyproject.toml" ] && $PIP install --no-build-isolation -e "$p"
done
$PIP install --no-build-isolation -e examples/fp4-triton
echo "environment ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
