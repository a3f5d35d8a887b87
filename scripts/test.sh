#!/usr/bin/env bash
# Set up .venv, then run every test: the core's, then each plugin's (one pytest run per
# folder, since plugin test files may share basenames). GPU tests skip without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
status=0
for dir in tests plugins/*/tests; do
  [ -d "$dir" ] || continue
  echo "== pytest $dir"
  .venv/bin/python -m pytest -q -p no:cacheprovider "$dir" "$@" || status=1
done
exit $status
