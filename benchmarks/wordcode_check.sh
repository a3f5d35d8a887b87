#!/usr/bin/env bash
# One device call (timeout_s 600) for the NVFP4 weight word code (fp4-trtllm 0.4): the plugin's
# GPU tests (every tactic against the exact reference, the scale-extreme test for the fp16
# subnormal operands), the decode table at M = 1, 8, 16, 32, 64 on the three Llama-70B layers
# and gpt-oss 2880 x 1024 (every tactic beside bf16 cuBLAS, copy bandwidth in the same run),
# then (unless NCU=0) Nsight Compute on one launch of the M = 1 8192 x 8192 ring tactic.
# Logs in logs.tgz.
# See device_env.sh for what to carry (.whl, .carry/jit).
#   run: bash benchmarks/wordcode_check.sh        (NCU=0 skips the profile, SANITIZE=1 adds
#   compute-sanitizer memcheck and racecheck on a small case, MX=1 an MXFP4 table at M = 1, 16)
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
timeout ${TEST_CAP:-110} python3 -m pytest -q -p no:cacheprovider --tb=short -rfE -m gpu plugins/fp4-trtllm/tests \
  > "$OUT/tests-trtllm.log" 2>&1
echo "trtllm tests rc=$? $(tail -1 "$OUT/tests-trtllm.log")" > "$OUT/summary.txt"
trtllm_bench trtllm ${DECODE_CAP:-220} 1,8,16,32,64 8192:8192,28672:8192,8192:28672,2880:1024
[ "${MX:-0}" = 1 ] && trtllm_bench trtllm-mx 150 1,16 8192:8192,28672:8192,8192:28672 --mx  # MXFP4
if [ "${NCU:-1}" = 1 ]; then
SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis --section InstructionStats"
timeout ${NCU_CAP:-90} ncu --clock-control none -k regex:fp4_splitk --launch-skip 2 --launch-count 1 $SECTIONS \
  python3 benchmarks/trtllm_case.py 1 8192 8192 > "$OUT/ncu-ring.txt" 2>&1
echo "ncu ring rc=$?" >> "$OUT/summary.txt"
fi
if [ "${SANITIZE:-0}" = 1 ]; then  # compute-sanitizer memcheck + racecheck, small case (the plugin's script)
  OUT="$OUT/sanitizer" TEST_MARK=no_such_mark timeout 200 bash plugins/fp4-trtllm/device_check.sh tests > /dev/null 2>&1
  echo "sanitizer: $(grep -c 'ERROR SUMMARY: 0 errors\|RACECHECK SUMMARY: 0 hazards' "$OUT/sanitizer/sanitizer.txt") of 2 clean" >> "$OUT/summary.txt"
fi
cat "$OUT/summary.txt"
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
