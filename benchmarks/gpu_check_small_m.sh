#!/bin/bash
# One device call (<= 10 min): the wgmma tile at M <= 16 (8 or 16 activation rows, x padded by TMA's zero fill),
# checked and timed beside the GEMV and registers-tile picks, then the #5 M=1 matrix with the tuner.
#   1. CASES (default benchmarks/cases/wgmma_small_m.json): its wgmma specs against the fp32 reference (check_wgmma:
#      N and M tails, M=1 included, split-K 1 and 3, bias, an x view), then every case timed beside fp16 (time_specs,
#      at most CASES_S seconds, 200 by default)
#   2. the M=1 matrix with the tuner: 2 shapes, b in {2, 3, 4, 8}, uniform, Hadamard 0 and 128, no peers
# Run from the repo root on the GPU machine:  [CASES=FILE] [TOTAL_S=N] bash benchmarks/gpu_check_small_m.sh OUT_DIR
# TOTAL_S caps the whole call (580 by default; section 2 gets what is left).
source "$(dirname "$0")/gpu_prelude.sh" "$@"
CASES=${CASES:-benchmarks/cases/wgmma_small_m.json}

wgmma_check 1 "$CASES" "$(basename "$CASES" .json)"
time_cases 1 "$CASES" "$(basename "$CASES" .json)" cases "${CASES_S:-200}" 32

m1_matrix 2 "${TOTAL_S:-580}" 20 --bits 4,2,3,8 --hads 0,128 --budget 240
echo "--- total $(el)"
