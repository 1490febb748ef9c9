#!/bin/bash
# One device call (<= 10 min): the M=1 GEMV with x's operands made once per program (KernelSpec.x_once / had_once:
# each K step at its own scale, the pairs times xs and, on subnormal codes, the zero point's start and the per-bit
# pairs, stored to scratch before the K loop, which loads them) against the session-37 picks, then the #5 M=1 matrix
# with the tuner offering the twins (session 38 ran section 2 only: RESULTS_kernels.md).
#   1. the CPU tests' K-tail, x_ahead, l2_ahead and x_once kernel cases compiled on the GPU, against the reference
#   2. benchmarks/cases/gemv_x_once.json: the picks and other tiles beside their x_once twins; the rotated picks
#      beside had_once (step scales, subnormal codes), with and without x_ahead; checked against the reference and
#      timed (at most CASES_S seconds, 300)
#   3. the M=1 matrix with the tuner: 2 shapes, b in {2, 3, 4}, uniform, Hadamard 0 and 128, no peers
# Run from the repo root on the GPU machine:  [TOTAL_S=N] bash benchmarks/gpu_check_x_once.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"
k_tails_check 1
time_cases 2 benchmarks/cases/gemv_x_once.json "x operands once per program against the picks" x_once \
    "${CASES_S:-300}" 46
m1_matrix 3 "${TOTAL_S:-580}" 16 --bits 2,3,4 --hads 0,128 --budget 180
echo "--- total $(el)"
