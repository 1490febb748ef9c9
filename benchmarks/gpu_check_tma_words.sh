#!/bin/bash
# One device call (<= 10 min): the M=1 GEMV with each K step's words copied by TMA into a shared-memory ring
# (KernelSpec.tma_words: num_stages - 1 steps of words in flight without registers) against the register-prefetch
# picks of session 37 (w2, w4, w8 on both 28672/8192 shapes).
#   1. the CPU tests' K-tail, x_ahead, l2_ahead, x_once and tma_words cases compiled on the GPU, against the reference
#   2. benchmarks/cases/gemv_tma_words.json: each pick, then its tma_words twins (num_stages 3 / 4 / 6, other tiles),
#      checked against the reference and timed (at most CASES_S seconds, 420)
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_tma_words.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"
k_tails_check 1
time_cases 2 benchmarks/cases/gemv_tma_words.json "words by TMA against the register prefetch" tma_words \
    "${CASES_S:-440}" 28
echo "--- total $(el)"
