#!/usr/bin/env bash
# The benchmark suite: every table of docs/benchmarks.md from one script, one device call
# (timeout_s 600) per selection of steps.
#
#   bash benchmarks/suite.sh --list                 the steps and the docs section each reproduces
#   bash benchmarks/suite.sh help                   this text
#   bash benchmarks/suite.sh tests host layer auto  run these steps, in this order
#   STEPS="trtllm cudnn" bash benchmarks/suite.sh   the same, from the environment
#
# Carry .whl and .carry/jit (see device_env.sh, which installs the tree and records the device
# and its copy bandwidth). Each step writes its logs and JSON under $OUT/work and appends one
# line to $OUT/summary.txt; at most 8 files come back from a device call, so $OUT/work comes
# back as one archive, $OUT/logs.tgz. The tuning cache of the call is $OUT/work/tuning-cache.json.
#
# Every step has a time cap (seconds, <STEP>_CAP) and arguments as variables; the defaults are
# the arguments of the latest table. docs/benchmarks.md ("Reproducing") gives the exact command
# line of every table, older ones included.
#   tests        TEST_DIRS (dirs or files), TEST_K (pytest -k), TEST_CAP (per dir)
#   host         HOST_CAP                        quant      QUANT_M, QUANT_TILES=1, QUANT_CAP
#   bind-host    BIND_BACKENDS (default cutlass trtllm), BIND_CAP: run hook vs bound launcher, host us
#   trtllm-w16   TRTLLM_W16_M, TRTLLM_W16_N, TRTLLM_W16_K (fp4core bench --tactics --w4a16 lists),
#                TRTLLM_W16_OLD (a folder holding another fp4_trtllm package: timed too, tactic for
#                tactic), TRTLLM_W16_CAP (per version)
#   pdl-ab       PDL_AB_M, PDL_AB_SHAPES, PDL_AB_VARIANTS, PDL_AB_BACKENDS (trtllm,cutlass), PDL_AB_CAP:
#                layers with programmatic dependent launch off and on, interleaved, beside bf16
#   one-pass-ab  ONE_PASS_AB_M (1,7), ONE_PASS_AB_SHAPES (2880x1024,7168x2048), ONE_PASS_AB_CAP (each run):
#                the small W4A4 layers with one-launch dynamic quantization, then with two
#                (FP4CORE_QUANT_ONE_PASS_MAX=0, the first run's tactics), each beside bf16
#   fused-ab     FUSED_AB_SHAPES (MxNxK list; default: the script's), FUSED_AB_CAP: small W4A4 layers with
#                the quantization inside the trtllm ring GEMM (one kernel) against quantizer + GEMM
#                (every ring tactic: bits must match), beside bf16 and the Fp4Linear layer
#   layer        LAYER_M, LAYER_CAP              auto       AUTO_M, AUTO_CAP
#   w4a16        W4A16_M, W4A16_BACKENDS (default trtllm,cutlass; auto always runs), W4A16_LAYER_M,
#                W4A16_CAP (each of the two benches; both tuned)
#   e2e          E2E_ARGS, E2E_CAP (carry .carry/minilm: python examples/e2e_model.py --export .carry/minilm)
#   decode       SUFFIX (-short or ""), DECODE_BACKENDS, DECODE_CAP
#   prefill      SUFFIX, PREFILL_SHAPES, PREFILL_BACKENDS, PREFILL_CAP
#   trtllm       TRTLLM_M, TRTLLM_SHAPES ("": the script's six), TRTLLM_CAP
#   trtllm-mx    TRTLLM_MX_M, TRTLLM_MX_SHAPES, TRTLLM_MX_CAP
#   trtllm-sanitizer  TRTLLM_SANITIZER_CAP
#   cudnn        CUDNN_SHAPES (a file), CUDNN_RUNS (labels: "a b" runs it twice), CUDNN_CAP
#   cudnn-split  CUDNN_SPLIT_ARGS (e.g. --dequant-sweep), CUDNN_SPLIT_CAP
#   cudnn-graph  CUDNN_GRAPH_CAP                 cudnn-interleave  INTERLEAVE_ENGINES, INTERLEAVE_CAP
#   cutlass      CUTLASS_M, CUTLASS_SHAPES, CUTLASS_CAP
#   backends     BACKENDS_M (one fp4core bench per M, N = K = 8192), BACKENDS_CAP (per M)
#   torch        TORCH_CAP                       standard   STANDARD_CAP
#   sanitizer    TOOLS, SHAPES, FORMATS, SAN_BACKENDS, PLAIN, BUDGET_<TOOL>
#   probes       PROBES ("stream bulk"), PROBE_CAP
#   ncu          NCU_CASES ("quant splitk ring ring-splits"), NCU_CAP (per profiled case)
set -uo pipefail
cd "$(dirname "$0")/.."

STEP_ORDER=(tests host bind-host pdl-ab one-pass-ab fused-ab quant layer auto w4a16 trtllm-w16 e2e decode prefill trtllm trtllm-mx trtllm-sanitizer cudnn
            cudnn-split cudnn-graph cudnn-interleave cutlass backends torch standard sanitizer probes ncu)
# step -> the docs/benchmarks.md section(s) it reproduces ("; " between sections)
declare -A SECTION=(
  [tests]="2026-12-04, NVIDIA H200 — the layer path; Run 5 (same day, a later session)"
  [host]="Host time per call; Run 5 (same day, a later session)"
  [quant]="Activation/weight quantization"
  [bind-host]="2026-12-06 (third session), NVIDIA H100 — the bound cutlass launcher and the bf16 word code"
  [trtllm-w16]="2026-12-06 (third session), NVIDIA H100 — the bound cutlass launcher and the bf16 word code"
  [pdl-ab]="2026-12-06 (fourth session) — Programmatic dependent launch"
  [one-pass-ab]="2026-12-07 — One-launch dynamic quantization"
  [fused-ab]="2026-12-07 (second session) — Quantization inside the GEMM"
  [layer]="Fp4Linear against bf16 nn.Linear; Host time per call"
  [auto]="auto on a prepared weight"
  [w4a16]="2026-12-06 — W4A16 on Hopper"
  [e2e]="End to end: all-MiniLM-L6-v2"
  [decode]="2026-11-25, NVIDIA H100 80GB HBM3 — every GPU backend"
  [prefill]="2026-11-25, NVIDIA H100 80GB HBM3 — every GPU backend; Prefill, short target sweep"
  [trtllm]="2026-12-01 (fourth session); fp4-trtllm (issue 5): split-K through a shared-memory ring; fp4-trtllm decode (issue 5); fp4-trtllm"
  [trtllm-mx]="2026-12-01 (fourth session); fp4-trtllm (issue 5): split-K through a shared-memory ring"
  [trtllm-sanitizer]="2026-12-01 (fourth session); 2026-12-01 (third session)"
  [cudnn]="fp4-cudnn (issue 8): the standard sweep, tuned"
  [cudnn-split]="Prefill, short target sweep; fp4-cudnn (issue 8): the standard sweep, tuned"
  [cudnn-graph]="Prefill, short target sweep"
  [cudnn-interleave]="fp4-cudnn (issue 8): the standard sweep, tuned"
  [cutlass]="fp4-cutlass"
  [backends]="fp4-triton"
  [torch]="core \`torch\` backend"
  [standard]="2026-11-24, NVIDIA H100 80GB HBM3 — the standard sweep"
  [sanitizer]="Run 5 (same day, a later session)"
  [probes]="fp4-trtllm decode (issue 5); 2026-12-01 (fourth session)"
  [ncu]="Activation/weight quantization; fp4-trtllm decode (issue 5); 2026-12-01 (fourth session)"
)

list_steps() {
  local s
  for s in "${STEP_ORDER[@]}"; do printf '%-17s %s\n' "$s" "${SECTION[$s]}"; done
}

case "${1:-}" in
  --list|list) list_steps; exit 0 ;;
  -h|--help|help) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; echo; list_steps; exit 0 ;;
esac
[ $# -gt 0 ] && STEPS="$*"
STEPS=${STEPS:-"tests host quant layer auto"}
for s in $STEPS; do
  [ -n "${SECTION[$s]:-}" ] || { echo "unknown step: $s (bash benchmarks/suite.sh --list)" >&2; exit 2; }
done

source benchmarks/device_env.sh
W=$OUT/work
mkdir -p "$W"
export FP4CORE_TUNING_CACHE=${FP4CORE_TUNING_CACHE:-$W/tuning-cache.json}
trap 'tar czf "$OUT/logs.tgz" -C "$OUT" work' EXIT
PYTEST="python3 -m pytest -q -p no:cacheprovider --tb=short -rfE -m gpu"
done_line() { echo "$1 rc=$2 ${3:-}" | tee -a "$OUT/summary.txt"; }  # done_line STEP RC [NOTE]

step_tests() {
  local d log
  for d in ${TEST_DIRS:-tests plugins/fp4-trtllm/tests plugins/fp4-cutlass/tests plugins/fp4-cudnn/tests examples/fp4-triton/tests}; do
    log="$W/tests-${d//\//_}.log"
    timeout ${TEST_CAP:-150} $PYTEST ${TEST_K:+-k "$TEST_K"} $d > "$log" 2>&1
    done_line "tests $d" $? "$(tail -1 "$log")"
  done
}

step_host() {
  timeout ${HOST_CAP:-150} python3 benchmarks/host_overhead.py --json "$W/host.json" > "$W/host.txt" 2>&1
  done_line host $?; cat "$W/host.txt"
}

step_bind-host() {
  local b
  for b in ${BIND_BACKENDS:-cutlass trtllm}; do
    (cd benchmarks && timeout ${BIND_CAP:-60} python3 bind_host.py --backend "$b") > "$W/bind-host-$b.txt" 2>&1
    done_line "bind-host $b" $?; cat "$W/bind-host-$b.txt"
  done
}

step_pdl-ab() {  # layers with PDL off and on, interleaved graph replays and eager calls, beside bf16
  FP4CORE_BACKENDS=${PDL_AB_BACKENDS:-trtllm,cutlass} timeout ${PDL_AB_CAP:-300} python3 benchmarks/pdl_ab.py --m "${PDL_AB_M:-1,16,64,128}" \
    --shapes "${PDL_AB_SHAPES:-8192x8192,28672x8192,8192x28672}" --variants "${PDL_AB_VARIANTS:-nvfp4,w4a16-nvfp4}" \
    --json "$W/pdl-ab.json" > "$W/pdl-ab.txt" 2> "$W/pdl-ab-progress.log"
  done_line pdl-ab $?; cat "$W/pdl-ab.txt"
}

step_one-pass-ab() {  # small W4A4 layers: one-launch dynamic quantization, then two launches
  local run env args=(--m "${ONE_PASS_AB_M:-1,7}" --shapes "${ONE_PASS_AB_SHAPES:-2880x1024,7168x2048}" --variants nvfp4)
  for run in one two; do
    env=(); [ $run = two ] && env=(FP4CORE_QUANT_ONE_PASS_MAX=0) && args+=(--no-tune)  # the first run's tactics
    env "${env[@]}" FP4CORE_BACKENDS=${PDL_AB_BACKENDS:-trtllm,cutlass} timeout ${ONE_PASS_AB_CAP:-120} \
      python3 benchmarks/pdl_ab.py "${args[@]}" --json "$W/one-pass-ab-$run.json" > "$W/one-pass-ab-$run.txt" \
      2> "$W/one-pass-ab-$run-progress.log"
    done_line "one-pass-ab $run" $?; cat "$W/one-pass-ab-$run.txt"
  done
}

step_fused-ab() {  # small W4A4 layers: quantization inside the trtllm ring GEMM vs quantizer + GEMM
  FP4CORE_BACKENDS=${PDL_AB_BACKENDS:-trtllm,cutlass} timeout ${FUSED_AB_CAP:-240} python3 benchmarks/fused_quant_ab.py \
    ${FUSED_AB_SHAPES:+--shapes "$FUSED_AB_SHAPES"} --json "$W/fused-ab.json" > "$W/fused-ab.txt" 2> "$W/fused-ab-progress.log"
  done_line fused-ab $?; cat "$W/fused-ab.txt"
}

step_trtllm-w16() {  # every weight-only trtllm tactic by graph replay, no tuning cache involved
  local args=(bench --tactics --w4a16 --backends trtllm --m "${TRTLLM_W16_M:-1,16}"
              --n "${TRTLLM_W16_N:-8192}" --k "${TRTLLM_W16_K:-8192,28672}")
  timeout ${TRTLLM_W16_CAP:-120} fp4core "${args[@]}" --json "$W/trtllm-w16.json" > "$W/trtllm-w16.txt" 2>&1
  done_line trtllm-w16 $?
  if [ -n "${TRTLLM_W16_OLD:-}" ]; then
    PYTHONPATH=$TRTLLM_W16_OLD:${PYTHONPATH:-} timeout ${TRTLLM_W16_CAP:-120} \
      fp4core "${args[@]}" --json "$W/trtllm-w16-other.json" > "$W/trtllm-w16-other.txt" 2>&1
    done_line "trtllm-w16 other" $?
    cat "$W/trtllm-w16-other.txt"
  fi
  cat "$W/trtllm-w16.txt"
}

step_quant() {
  if [ "${QUANT_TILES:-1}" = 1 ]; then  # the tile sweep (the bench below keeps the default tiles)
    timeout ${QUANT_CAP:-60} python3 -c "
from fp4core.tools.bench_quant import sweep_configs, tiles_env
best = sweep_configs()
print('best', best); print('FP4CORE_QUANT_TILES=' + tiles_env(best))" > "$W/quant-sweep.txt" 2>&1
    done_line quant-tiles $? "$(tail -1 "$W/quant-sweep.txt")"
  fi
  timeout ${QUANT_CAP:-60} fp4core bench --quantize --m ${QUANT_M:-1,16,2048,8192} --json "$W/quant.json" \
    2>"$W/quant-progress.log" > "$W/quant.txt"
  done_line quant $?; cat "$W/quant.txt"
}

step_layer() {
  timeout ${LAYER_CAP:-240} fp4core bench --layer --preset llama3-70b --m ${LAYER_M:-1,16,128,2048} --autotune \
    --json "$W/layer.json" 2>"$W/layer-progress.log" > "$W/layer.txt"
  done_line layer $?; cat "$W/layer.txt"
}

step_auto() {
  timeout ${AUTO_CAP:-200} python3 benchmarks/auto_prepared.py --m ${AUTO_M:-1,16,128,2048,8192} \
    --json "$W/auto.json" > "$W/auto.txt" 2>&1
  done_line auto $?; cat "$W/auto.txt"
}

step_w4a16() {  # fp4core bench --w4a16 (GEMM, beside bf16 and tinygemm), then the weight-only layers
  timeout ${W4A16_CAP:-200} fp4core bench --w4a16 --preset llama3-70b --prepared --m ${W4A16_M:-1,16,64,128,2048} \
    --backends ${W4A16_BACKENDS:-trtllm,cutlass} --autotune --json "$W/w4a16.json" 2>"$W/w4a16-progress.log" \
    > "$W/w4a16.txt"
  done_line w4a16 $?; cat "$W/w4a16.txt"
  timeout ${W4A16_CAP:-200} fp4core bench --layer --w4a16 --variants nvfp4,w4a16-nvfp4,w4a16-mxfp4,tinygemm-int4 \
    --preset llama3-70b --m ${W4A16_LAYER_M:-1,16,64,128,2048} --autotune \
    --json "$W/w4a16-layer.json" 2>"$W/w4a16-layer-progress.log" > "$W/w4a16-layer.txt"
  done_line w4a16-layer $?; cat "$W/w4a16-layer.txt"
}

step_e2e() {
  timeout ${E2E_CAP:-240} python3 examples/e2e_model.py ${E2E_ARGS:-} --json "$W/e2e.json" \
    2>"$W/e2e-progress.log" > "$W/e2e.txt"
  done_line e2e $?; cat "$W/e2e.txt"
}

# fp4core bench --autotune over a shapes file beside bf16 (interleaved): bench_shapes NAME CAP FILE BACKENDS
bench_shapes() {
  FP4CORE_BACKENDS=$4 timeout "$2" fp4core bench --shapes-file "$3" --autotune --json "$W/$1.json" \
    2>"$W/$1-progress.log" > "$W/$1.txt"
  done_line "$1" $? "$3"; cat "$W/$1.txt"
}

step_decode() {
  bench_shapes decode ${DECODE_CAP:-230} benchmarks/shapes/h100-decode${SUFFIX--short}.txt \
    ${DECODE_BACKENDS:-cutlass,trtllm,cudnn}
}

step_prefill() {
  bench_shapes prefill ${PREFILL_CAP:-230} ${PREFILL_SHAPES:-benchmarks/shapes/h100-prefill${SUFFIX--short}.txt} \
    ${PREFILL_BACKENDS:-cutlass,trtllm,cudnn}
}

# bench_trtllm.py: every tactic checked, then timed beside bf16: trtllm_table NAME CAP M SHAPES [ARGS]
trtllm_table() {
  local name=$1 cap=$2 ms=$3 shapes=$4; shift 4
  timeout "$cap" python3 plugins/fp4-trtllm/bench_trtllm.py --verbose --m "$ms" ${shapes:+--shapes "$shapes"} "$@" \
    --out "$W/$name.md" > "$W/$name.log" 2>&1
  done_line "$name" $?; cat "$W/$name.md" 2>/dev/null
}

step_trtllm() {
  trtllm_table trtllm ${TRTLLM_CAP:-220} ${TRTLLM_M:-1,8,16,32,64} \
    "${TRTLLM_SHAPES-8192:8192,28672:8192,8192:28672,2880:1024}"
}

step_trtllm-mx() {
  trtllm_table trtllm-mx ${TRTLLM_MX_CAP:-150} ${TRTLLM_MX_M:-1,16} \
    "${TRTLLM_MX_SHAPES-8192:8192,28672:8192,8192:28672}" --mx
}

step_trtllm-sanitizer() {  # compute-sanitizer memcheck + racecheck on the plugin's small case
  OUT="$W/trtllm-sanitizer" TEST_MARK=no_such_mark SANITIZERS="memcheck racecheck" SANITIZER_TIMEOUT=60 \
    timeout ${TRTLLM_SANITIZER_CAP:-200} bash plugins/fp4-trtllm/device_check.sh tests > "$W/trtllm-sanitizer.log" 2>&1
  done_line trtllm-sanitizer $? "$(grep -c 'ERROR SUMMARY: 0 errors\|RACECHECK SUMMARY: 0 hazards' \
    "$W/trtllm-sanitizer/sanitizer.txt" 2>/dev/null) of 2 clean"
}

step_cudnn() {
  local run
  for run in ${CUDNN_RUNS:-a}; do
    bench_shapes "cudnn-$run" ${CUDNN_CAP:-200} ${CUDNN_SHAPES:-benchmarks/shapes/cudnn-targets.txt} cudnn
  done
}

step_cudnn-split() {  # the backend split into its halves (dequantization, matmul plan) beside bf16
  FP4CORE_BACKENDS=cudnn timeout ${CUDNN_SPLIT_CAP:-150} python3 plugins/fp4-cudnn/scripts/bench.py ${CUDNN_SPLIT_ARGS:-} \
    --shape 4096:8192:8192 --shape 2048:8192:8192 --json "$W/cudnn-split.json" > "$W/cudnn-split.txt" 2>&1
  done_line cudnn-split $?; tail -30 "$W/cudnn-split.txt"
}

step_cudnn-graph() {  # eager vs CUDA-graph replay, and whether an eager call blocks the host
  FP4CORE_BACKENDS=cudnn timeout ${CUDNN_GRAPH_CAP:-90} python3 plugins/fp4-cudnn/scripts/graph_vs_eager.py \
    --shape 4096:8192:8192 > "$W/cudnn-graph.txt" 2>&1
  done_line cudnn-graph $?
  FP4CORE_BACKENDS=cudnn timeout ${CUDNN_GRAPH_CAP:-90} python3 plugins/fp4-cudnn/scripts/host_block_probe.py \
    --shape 4096:8192:8192 >> "$W/cudnn-graph.txt" 2>&1
  done_line cudnn-host-block $?; cat "$W/cudnn-graph.txt"
}

step_cudnn-interleave() {  # is bf16 slowed by the cudnn batches it alternates with?
  local eng
  for eng in ${INTERLEAVE_ENGINES:-eng0 eng4}; do
    timeout ${INTERLEAVE_CAP:-90} python3 plugins/fp4-cudnn/scripts/interleave_probe.py --shape 4096:8192:8192 \
      --engine "$eng" --rounds 2 >> "$W/cudnn-interleave.txt" 2>&1
    done_line "cudnn-interleave $eng" $?
  done
  cat "$W/cudnn-interleave.txt"
}

step_cutlass() {
  local ms=${CUTLASS_M:-128,256,2048,4096}
  timeout ${CUTLASS_CAP:-200} python3 plugins/fp4-cutlass/bench_cutlass.py --m "$ms" \
    --shapes ${CUTLASS_SHAPES:-8192:8192,28672:8192} --out "$W/cutlass.md" > "$W/cutlass.log" 2>&1
  done_line cutlass $?; cat "$W/cutlass.md" 2>/dev/null
  timeout ${CUTLASS_CAP:-200} fp4core bench --backends cutlass --autotune --m "$ms" --n 8192,28672 --k 8192 \
    --json "$W/cutlass-fp4core.json" 2>"$W/cutlass-fp4core-progress.log" > "$W/cutlass-fp4core.txt"
  done_line cutlass-fp4core-bench $?; cat "$W/cutlass-fp4core.txt"
}

step_backends() {  # every installed backend, tuned, one M at a time (a timeout loses one row)
  local m
  for m in ${BACKENDS_M//,/ }; do
    timeout ${BACKENDS_CAP:-120} fp4core bench --autotune --m "$m" --n 8192 --k 8192 --json "$W/backends-m$m.json" \
      2>"$W/backends-m$m-progress.log" > "$W/backends-m$m.txt"
    done_line "backends m=$m" $?; cat "$W/backends-m$m.txt"
  done
}
BACKENDS_M=${BACKENDS_M:-1,16,64,128,256,1024,2048,8192}

step_torch() {  # the core's reference backend alone
  FP4CORE_DISABLE_PLUGIN_AUTOLOAD=1 timeout ${TORCH_CAP:-200} fp4core bench --m 1,16,128,256,2048,8192 --n 8192 \
    --k 8192 --json "$W/torch-nvfp4.json" 2>"$W/torch-progress.log" > "$W/torch.txt"
  done_line torch-nvfp4 $?
  FP4CORE_DISABLE_PLUGIN_AUTOLOAD=1 timeout ${TORCH_CAP:-200} fp4core bench --m 16,2048 --n 28672 --k 8192 \
    --format mxfp4 --json "$W/torch-mxfp4.json" 2>>"$W/torch-progress.log" >> "$W/torch.txt"
  done_line torch-mxfp4 $?; cat "$W/torch.txt"
}

step_standard() {  # fp4core bench's own sweep (the device's default M, N, K), every backend
  timeout ${STANDARD_CAP:-300} fp4core bench --json "$W/standard.json" 2>"$W/standard-progress.log" > "$W/standard.txt"
  done_line standard $?; cat "$W/standard.txt"
}

step_sanitizer() {  # every tactic of every backend under compute-sanitizer (sanitizer_sweep.py's grid)
  local logs=$W/sanitizer tool budget_var budget extra groups per g sel log rc
  mkdir -p "$logs"
  local tools=${TOOLS:-"memcheck racecheck initcheck"} formats=${FORMATS:-nvfp4,mxfp4}
  local backends=${SAN_BACKENDS:-"cudnn triton trtllm cutlass"} shapes=${SHAPES:-}
  # build the JIT kernels and warm Triton's cache outside the sanitizer (it slows compiles too)
  if [ "${PLAIN:-1}" = 1 ]; then
    timeout ${PLAIN_CAP:-120} python3 benchmarks/sanitizer_sweep.py ${shapes:+--shapes $shapes} --formats "$formats" \
      > "$logs/sweep-plain.log" 2>&1
    done_line "sanitizer plain sweep" $? "$(tail -1 "$logs/sweep-plain.log")"
  fi
  # memcheck: one process per backend, so a fault in one backend's kernel does not hide the
  # others (the context is gone after it); the other tools: one process, BUDGET_<TOOL> in all.
  for tool in $tools; do
    budget_var=BUDGET_${tool^^}
    budget=${!budget_var:-120}
    extra=(--report-api-errors no --print-limit 200 --target-processes all)
    [ "$tool" = memcheck ] && extra+=(--leak-check no)
    [ "$tool" = initcheck ] && extra+=(--track-unused-memory no)
    if [ "$tool" = memcheck ]; then groups=$backends; per=$((budget / $(wc -w <<< "$backends"))); else groups=all; per=$budget; fi
    for g in $groups; do
      sel=(); [ "$g" != all ] && sel=(--backends "$g")
      log="$logs/$tool-$g.log"
      # no caching allocator, so an overrun of a pooled block is visible
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout $((per + 90)) compute-sanitizer --tool "$tool" "${extra[@]}" \
        python3 benchmarks/sanitizer_sweep.py ${shapes:+--shapes $shapes} --formats "$formats" --budget-s "$per" "${sel[@]}" \
        > "$log" 2>&1
      rc=$?
      done_line "sanitizer $tool $g" $rc "$(grep -E '^SWEEP' "$log" | tail -1) | $(grep -E 'ERROR SUMMARY' "$log" | tail -1)"
      # the case before each report, and the report's first line
      awk '/^CASE/{c=$0} /^========= (Invalid|Race|Uninitialized|Warp|Cuda|Barrier|Program hit|Out-of)/{print c " :: " $0}' "$log" \
        | sort | uniq -c | sort -rn | head -12 | sed "s/^/  /" | tee -a "$OUT/summary.txt"
      grep -B1 "CONTEXT LOST" "$log" | head -4 | sed "s/^/  /" | tee -a "$OUT/summary.txt"
    done
  done
}

step_probes() {  # read-bandwidth probes of the decode kernels' access pattern (CUDA sources)
  local p
  for p in ${PROBES:-stream bulk}; do
    { nvcc -O3 -arch=sm_90a -o "/tmp/${p}_probe" "benchmarks/${p}_probe.cu" && timeout ${PROBE_CAP:-60} "/tmp/${p}_probe"; } \
      > "$W/$p-probe.txt" 2>&1
    done_line "probe $p" $?; cat "$W/$p-probe.txt"
  done
}

# Nsight Compute on one launch (the third) of a kernel: ncu_case NAME KERNEL_REGEX [NCU ARGS] -- COMMAND...
NCU_SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables
  --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats
  --section ComputeWorkloadAnalysis --section InstructionStats"
ncu_case() {
  local name=$1 kernel=$2; shift 2
  local args=(); while [ "$1" != -- ]; do args+=("$1"); shift; done; shift
  timeout ${NCU_CAP:-100} ncu --clock-control none -k "regex:$kernel" --launch-skip 2 --launch-count 1 "${args[@]}" \
    "$@" > "$W/ncu-$name.txt" 2>&1
  done_line "ncu $name" $?
}

step_ncu() {
  local c tag
  for c in ${NCU_CASES:-quant splitk ring ring-splits}; do
    case $c in
      quant) ncu_case quant _quant_kernel $NCU_SECTIONS -- python3 benchmarks/quant_case.py 8192 8192 ;;
      splitk) ncu_case splitk fp4_splitk $NCU_SECTIONS -- python3 benchmarks/trtllm_case.py 1 8192 8192 \
                '{"kernel": "splitk", "t": 4, "warps": 4, "split_k": 12}' ;;
      ring) ncu_case ring fp4_splitk $NCU_SECTIONS -- python3 benchmarks/trtllm_case.py 1 8192 8192 ;;
      ring-splits)  # the split-K ring kernel at M = 1: N K tiles-per-warp warps splits
        for tag in "28672 8192 4 4 2" "28672 8192 4 4 4" "8192 8192 2 4 4"; do
          set -- $tag
          ncu_case "ring-$1-$2-$3-$4-$5" fp4_splitk --set full --print-details all --metrics \
            sm__cycles_active.min,sm__cycles_active.max,sm__cycles_active.avg,sm__warps_active.max,sm__warps_active.avg \
            -- python3 benchmarks/trtllm_case.py 1 "$1" "$2" \
            "{\"kernel\": \"splitk\", \"t\": $3, \"warps\": $4, \"split_k\": $5, \"ring\": 1}"
        done ;;
      *) done_line "ncu $c" 2 "unknown case" ;;
    esac
  done
}

for s in $STEPS; do
  echo "== $s" | tee -a "$W/steps.log"
  "step_$s"
done
echo "== summary"; cat "$OUT/summary.txt"
