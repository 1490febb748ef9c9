#!/bin/bash
# One device call (about 3 minutes): session 40's follow-ups.
#   1. benchmarks/cases/gemv_w4_stages.json: the w4 GEMV with the words 2 and 3 K steps ahead in registers
#      (num_stages 3 / 4: more bytes in flight per program, fewer programs per SM) against the pick on both 28672/8192
#      shapes (the pick timed first and last, for drift); w3 n64 split 8 twice
#   2. the tuned M=1 w8 matrix (its tma_words twins joined the tuner in session 39)
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_w4_stages.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"
time_cases 1 benchmarks/cases/gemv_w4_stages.json "w4 prefetch distance" w4_stages 240 20
m1_matrix 2 560 14 --bits 8 --hads 0 --budget 120
echo "--- total $(el)"
