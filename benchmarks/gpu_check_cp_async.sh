#!/bin/bash
# One device call (<= 10 min): the M=1 GEMV with Triton's cp.async pipeline (KernelSpec.cp_async: the K loop's loads
# go to shared memory num_stages - 1 steps ahead, taking no registers) against the register prefetch, then the #5
# M=1 matrix with the tuner offering both (QCOMP_GEMV_CP_ASYNC=1; off by default since session 37).
#   1. benchmarks/cases/gemv_cp_async.json: the session-37 picks with the register prefetch and as cp_async s3/s4/s6,
#      splits that fill whole waves, had_once with cp_async; checked against the reference and timed (at most
#      CASES_S seconds, 240 by default)
#   2. the M=1 matrix with the tuner: 2 shapes, b in {2, 3, 4, 8}, uniform, Hadamard 0 and 128, no peers
# Run from the repo root on the GPU machine:  [TOTAL_S=N] bash benchmarks/gpu_check_cp_async.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"
time_cases 1 benchmarks/cases/gemv_cp_async.json "cp.async pipeline against the register prefetch" cp_async \
    "${CASES_S:-240}" 40
QCOMP_GEMV_CP_ASYNC=${QCOMP_GEMV_CP_ASYNC:-1} m1_matrix 2 "${TOTAL_S:-570}" 30 --bits 4,2,3,8 --hads 0,128 --budget 240
echo "--- total $(el)"
