#!/bin/bash
# One device call (about 6 minutes): the M=1 GEMV with one accumulator per row (KernelSpec.row_acc: each K step's
# partial sums added across their columns first; w4 n64 96 -> 80 registers, w4 n32 71 -> 64, w8 n32 93 -> 72 on
# sm_90, so more programs per SM) against the picks on both 28672/8192 shapes (the w4 pick first and last, for drift)
#   1. benchmarks/cases/gemv_row_acc.json, checked against the reference and timed
#   2. the CPU tests' kernel cases (row_acc's eight included) on the GPU
#   3. the tuned M=1 w4 / w8 matrix with the row_acc twins offered (QCOMP_GEMV_ROW_ACC=1: each M=1 gemv tile also
#      with one accumulator per row)
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_row_acc.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"
time_cases 1 benchmarks/cases/gemv_row_acc.json "one accumulator per row against the picks" row_acc 200 20
k_tails_check 2
QCOMP_GEMV_ROW_ACC=1 m1_matrix 3 560 14 --bits 4,8 --hads 0 --budget 150
echo "--- total $(el)"
