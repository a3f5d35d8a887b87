#!/usr/bin/env bash
# One call on a lent GPU: install fp4core and every plugin from the working tree, run the
# GPU-marked tests, then the standard `fp4core bench` sweep (JSON, PNG plot and logs under $OUT).
#
# Before the call, on the development machine (wheels the GPU machine lacks; .whl is git-ignored):
#   mkdir -p .whl && cp ../shared/wheels/*.whl .whl/
# then run this script with carry=[".whl"]. All tests run (GPU-marked ones included).
set -uo pipefail
OUT=${OUT:-./device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PIP="python3 -m pip install -q --no-deps --no-build-isolation --no-index"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
$PIP -e . || exit 1
for p in plugins/*/; do
  [ -f "$p/pyproject.toml" ] && { $PIP -e "$p" || echo "could not install $p"; }
done
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; } | tee "$OUT/device.txt"
python3 -c "
import torch, triton.testing as tt
x = torch.empty(1 << 30, dtype=torch.uint8, device='cuda'); y = torch.empty_like(x)
ms = tt.do_bench(lambda: y.copy_(x), return_mode='median')
print(f'device copy bandwidth {2 * x.numel() / ms / 1e9:.2f} TB/s (read+write)')" | tee -a "$OUT/device.txt"
fp4core backends | tee "$OUT/backends.txt"
for t in tests plugins/*/tests; do
  [ -d "$t" ] && python3 -m pytest -q -p no:cacheprovider "$t" 2>&1 | tee -a "$OUT/tests.log" | tail -4
done
fp4core bench --m 1,16,128,256,2048,8192 --n 8192 --k 8192 --json "$OUT/bench-8192x8192.json" \
  --plot "$OUT/bench-8192x8192.png" "$@" 2>"$OUT/bench-progress.log" | tee "$OUT/bench.txt"
fp4core bench --m 1,16,2048 --n 28672 --k 8192 --json "$OUT/bench-28672x8192.json" "$@" \
  2>>"$OUT/bench-progress.log" | tee -a "$OUT/bench.txt"
