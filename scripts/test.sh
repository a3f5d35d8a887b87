#!/usr/bin/env bash
# Set up .venv, then run every test: the core's and each plugin's. GPU tests skip without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
dirs="tests"
for p in plugins/*/tests; do [ -d "$p" ] && dirs="$dirs $p"; done
exec .venv/bin/python -m pytest -q -p no:cacheprovider $dirs "$@"
