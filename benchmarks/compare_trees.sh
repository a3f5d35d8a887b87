#!/usr/bin/env bash
# Before/after check of a change that must not move the numbers (issue 17): the same three
# benchmarks on an older tree and on the working tree, in one call on one card.
#   git archive <commit> | tar -x -C .carry/before     (here, before the call)
#   bash benchmarks/compare_trees.sh .carry/before      (on the GPU machine; carry .whl, .carry)
# Each tree is installed in turn (editable, no deps) and runs: benchmarks/host_overhead.py
# (host time per call), `fp4core bench --preset llama3-70b --m 1,16,128 --prepared` (every
# backend beside bf16) and `fp4core bench --layer --preset llama3-70b --m 1,16` (Fp4Linear vs
# nn.Linear). Caps (seconds, per tree): HOST_CAP, BENCH_CAP, LAYER_CAP. Output:
# $OUT/work/{before,after}/{host,bench,layer}.txt, packed into $OUT/compare.tgz (also when a cap
# or the call's limit cuts it short), and printed.
set -uo pipefail
BEFORE=${1:?usage: compare_trees.sh OLD_TREE}
ROOT=$PWD
source benchmarks/device_env.sh > /dev/null 2>&1
export FP4CORE_TUNING_CACHE=/tmp/compare-tuning.json
trap 'tar czf "$OUT/compare.tgz" -C "$OUT" work' EXIT
PIP="python3 -m pip install -q --no-deps --no-build-isolation --no-index"
install_tree() {
  (cd "$1" && for p in . plugins/*/ examples/fp4-triton/; do $PIP -e "$p" > /dev/null 2>&1 || echo "could not install $1/$p"; done)
}
bench() {  # $1: label, run from the tree's root
  local d=$OUT/work/$1
  mkdir -p "$d"
  timeout ${HOST_CAP:-60} python3 benchmarks/host_overhead.py > "$d/host.txt" 2>&1; echo "$1 host rc=$?"
  timeout ${BENCH_CAP:-150} fp4core bench --preset llama3-70b --m 1,16,128 --prepared > "$d/bench.txt" 2>/dev/null
  echo "$1 bench rc=$?"
  timeout ${LAYER_CAP:-90} fp4core bench --layer --preset llama3-70b --m 1,16 > "$d/layer.txt" 2>/dev/null
  echo "$1 layer rc=$?"
  for f in host bench layer; do echo "== $1 $f"; cat "$d/$f.txt"; done
}
cat "$OUT/device.txt"
install_tree "$BEFORE"; (cd "$BEFORE" && bench before)
install_tree "$ROOT"; bench after
