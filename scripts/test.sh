#!/usr/bin/env bash
# Set up .venv, then run every test: the core's, then each plugin's (one pytest run per
# folder, since plugin test files may share basenames), then the docs build (mkdocs --strict:
# a warning fails it). GPU tests skip without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
status=0
for dir in tests plugins/*/tests examples/fp4-triton/tests; do
  [ -d "$dir" ] || continue
  echo "== pytest $dir"
  .venv/bin/python -m pytest -q -p no:cacheprovider "$dir" "$@" || status=1
done
echo "== mkdocs build --strict"
site=$(mktemp -d)
.venv/bin/python -m mkdocs build --strict --quiet --site-dir "$site" || status=1
rm -rf "$site"
exit $status
