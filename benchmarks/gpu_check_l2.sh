#!/bin/bash
# One device call (about 3 min): the GEMV's bulk L2 prefetch of the words l2_ahead K steps ahead (KernelSpec.l2_ahead,
# render._l2_prefetch_lines):
#   1. the CPU tests' K-tail, x_ahead and l2_ahead kernel cases compiled on the GPU, inputs inside NaN poison
#   2. the tuner's M=1 picks (session 33: w4 on both 28672/8192 shapes, w2 at 28672x8192) with l2_ahead 0, 3 and 6,
#      cases interleaved by distance, the first repeated last (benchmarks/cases/gemv_m1_l2_ahead.json), beside fp16
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_l2.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"

k_tails_check 1

time_cases 2 benchmarks/cases/gemv_m1_l2_ahead.json "l2_ahead" l2 $(( 560 - $(date +%s) + T0 )) 25
echo "--- total $(el)"
