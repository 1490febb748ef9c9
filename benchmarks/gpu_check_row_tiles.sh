#!/bin/bash
# One device call (<= 10 min): the M=1 GEMV with several N tiles per program (KernelSpec.row_tiles: one software
# pipeline over a program's (tile, K step) units, fewer and longer programs) against the one-tile picks.
#   1. benchmarks/cases/gemv_row_tiles_w4_w3.json: the w4 / w3 picks on both 28672/8192 shapes, then row_tiles
#      twins at split counts that fill about one wave of programs, checked against the reference and timed
#   2. the CPU tests' K-tail, x_ahead, l2_ahead, x_once, tma_words and row_tiles cases compiled on the GPU
#   3. benchmarks/cases/gemv_row_tiles_w2_had_w8.json: the w2 picks (x_once, x_ahead), the rotated w3 / w4 picks
#      and w8, with their row_tiles twins
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_row_tiles.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"
time_cases 1 benchmarks/cases/gemv_row_tiles_w4_w3.json "w4 / w3: row_tiles against the one-tile picks" row_tiles_w4_w3 \
    200 24
k_tails_check 2
time_cases 3 benchmarks/cases/gemv_row_tiles_w2_had_w8.json "w2, rotated w3 / w4, w8: row_tiles" row_tiles_w2_had_w8 \
    "$(( 560 - $(date +%s) + T0 ))" 24
echo "--- total $(el)"
