# Sourced by the device scripts: install fp4core, every plugin and the example plugin from the
# working tree (plus the carried wheels in .whl/), and record the device and its copy bandwidth.
# Before the call, on the development machine: mkdir -p .whl && cp ../shared/wheels/*.whl .whl/
# and pass carry=[".whl"] (add ".carry" when a JIT cache was built there: FP4CORE_JIT_CACHE).
OUT=${OUT:-./device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PIP="python3 -m pip install -q --no-deps --no-build-isolation --no-index"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
# .carry/jit.tar.xz: the same cache packed (a third of the size) when the carry limit is tight
[ ! -d .carry/jit ] && [ -f .carry/jit.tar.xz ] && tar xJf .carry/jit.tar.xz -C .carry
[ -d .carry/jit ] && export FP4CORE_JIT_CACHE=$PWD/.carry/jit
$PIP -e . || exit 1
for p in plugins/*/ examples/fp4-triton/; do
  [ -f "$p/pyproject.toml" ] && { $PIP -e "$p" || echo "could not install $p"; }
done
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; } | tee "$OUT/device.txt"
python3 -c "
import torch, triton.testing as tt
x = torch.empty(1 << 30, dtype=torch.uint8, device='cuda'); y = torch.empty_like(x)
ms = tt.do_bench(lambda: y.copy_(x), return_mode='median')
print(f'device copy bandwidth {2 * x.numel() / ms / 1e9:.2f} TB/s (read+write)')" | tee -a "$OUT/device.txt"
fp4core backends | tee "$OUT/backends.txt"

# Shared steps of the device scripts; each appends one line to $OUT/summary.txt.
#   trtllm_bench NAME CAP_S M_LIST SHAPES [extra bench_trtllm.py args]  -> $OUT/NAME.md, NAME.log
trtllm_bench() {
  local name=$1 cap=$2 ms=$3 shapes=$4; shift 4
  timeout "$cap" python3 plugins/fp4-trtllm/bench_trtllm.py --verbose --m "$ms" --shapes "$shapes" "$@" \
    --out "$OUT/$name.md" > "$OUT/$name.log" 2>&1
  echo "$name bench rc=$?" >> "$OUT/summary.txt"
}
#   cudnn_bench NAME CAP_S SHAPES_FILE  (tuned fp4core bench, cudnn only) -> $OUT/NAME.json, .txt
cudnn_bench() {
  local name=$1 cap=$2 shapes=$3
  FP4CORE_BACKENDS=cudnn timeout "$cap" fp4core bench --shapes-file "$shapes" --autotune \
    --json "$OUT/$name.json" 2>"$OUT/$name-progress.log" > "$OUT/$name.txt"
  echo "$name rc=$?" >> "$OUT/summary.txt"
}
