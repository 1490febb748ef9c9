#!/bin/bash
# One device call (<= 10 min): x_once / had_once with the x operands shared by a split's N tiles
# (KernelSpec.once_shared: the first program of each (row tile, split) makes them, the others wait on its flag)
# against the M=1 picks (w2, w3, w4; unrotated and Hadamard 128) on both 28672/8192 shapes.
#   1. the CPU tests' kernel cases (K tails, x_ahead, l2_ahead, x_once, once_shared, tma_words) on the GPU
#   2. benchmarks/cases/gemv_once_shared.json: picks and shared twins, checked against the reference and timed
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_once_shared.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"
k_tails_check 1
time_cases 2 benchmarks/cases/gemv_once_shared.json "x operands shared by N tiles against the picks" once_shared \
    "${CASES_S:-480}" 36
echo "--- total $(el)"
