#!/usr/bin/env bash
# One device call: install the cuDNN frontend wheel, fp4core and fp4-cudnn, run the plugin's
# tests (CPU and GPU), then time the backend against bf16 cuBLAS. Logs and JSON land in $OUT.
#
#   run(command="bash plugins/fp4-cudnn/device_check.sh", carry=[".whl"])
#
# Needs .whl/nvidia_cudnn_frontend-*.whl (cp312) in the repository root (git-ignored).
# Environment: BENCH_ARGS (extra bench.py arguments), PYTEST_ARGS, PYTEST_TIMEOUT, BENCH_TIMEOUT.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/fp4-cudnn-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=python3
SITE=/tmp/site

echo "== environment" | tee "$OUT/env.log"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
  $PY -c "import cuda.bindings" 2>&1 | tail -1 | sed 's/^/cuda-python: /'
  date -u +%Y-%m-%dT%H:%M:%SZ; } 2>&1 | tee -a "$OUT/env.log"

echo "== install" | tee "$OUT/install.log"
$PY -m pip install -q --no-index --no-deps --target "$SITE" .whl/nvidia_cudnn_frontend*.whl >>"$OUT/install.log" 2>&1 \
  || { echo "frontend wheel install failed"; cat "$OUT/install.log"; exit 1; }
# fp4core and the plugin: a normal (non-editable) install so the entry point is registered.
if ! $PY -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" . plugins/fp4-cudnn \
     >>"$OUT/install.log" 2>&1; then
  # No usable setuptools there: register by hand (a dist-info with the entry point) and
  # import both packages from the working tree.
  echo "pip could not build the packages; writing dist-info by hand" | tee -a "$OUT/install.log"
  mkdir -p "$SITE/fp4_cudnn-0.1.0.dist-info" "$SITE/fp4core-0.1.0.dist-info"
  printf 'Metadata-Version: 2.1\nName: fp4-cudnn\nVersion: 0.1.0\n' >"$SITE/fp4_cudnn-0.1.0.dist-info/METADATA"
  printf '[fp4core.backends]\ncudnn = fp4_cudnn.plugin:CudnnBackend\n' >"$SITE/fp4_cudnn-0.1.0.dist-info/entry_points.txt"
  printf 'Metadata-Version: 2.1\nName: fp4core\nVersion: 0.1.0\n' >"$SITE/fp4core-0.1.0.dist-info/METADATA"
  export PYTHONPATH="$PWD:$PWD/plugins/fp4-cudnn"
fi
export PYTHONPATH="$SITE:${PYTHONPATH:-}"
$PY -c "import cudnn, fp4core; from fp4_cudnn import env; print('cudnn frontend', cudnn.__version__, 'library', env.cudnn_version(), env.cudnn_problem()); print([ (b.name, b.status, b.error) for b in fp4core.backends()])" 2>&1 | tee -a "$OUT/install.log"

echo "== tests"
set -o pipefail
timeout "${PYTEST_TIMEOUT:-150}" $PY -m pytest plugins/fp4-cudnn/tests -q -rs -p no:cacheprovider \
  --junitxml="$OUT/junit.xml" ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/pytest.log" | tail -n 60
echo "pytest exit: $?"

echo "== bench"
timeout "${BENCH_TIMEOUT:-170}" $PY plugins/fp4-cudnn/scripts/bench.py --json "$OUT/bench.json" ${BENCH_ARGS:-} \
  2>&1 | tee "$OUT/bench.log" | grep -v '^{' | tail -n 40
echo "bench exit: $?"
