#!/bin/bash
# One device call (about 3 min): the GEMV's bulk L2 prefetch of the words l2_ahead K steps ahead (KernelSpec.l2_ahead,
# render._l2_prefetch_lines):
#   1. the CPU tests' K-tail, x_ahead and l2_ahead kernel cases compiled on the GPU, inputs inside NaN poison
#   2. the tuner's M=1 picks (session 33: w4 on both 28672/8192 shapes, w2 / w3 / w8 at 28672x8192) with l2_ahead 0, 3
#      and 6 (w3, w8: 0 and 3), cases interleaved by distance (benchmarks/cases/gemv_m1_l2_ahead.json), beside fp16
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_l2.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"

k_tails_check 1

echo "--- 2. l2_ahead timed $(el)"
timeout $(( 560 - $(date +%s) + T0 )) python3 benchmarks/time_specs.py benchmarks/cases/gemv_m1_l2_ahead.json \
    --out "$OUT/l2" 2>&1 | grep -vE "Warning|warn\(" | tail -25
echo "time_l2_rc=${PIPESTATUS[0]}"
echo "--- total $(el)"
