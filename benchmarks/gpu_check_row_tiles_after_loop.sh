#!/bin/bash
# One device call (<= 5 min): row_tiles with the tiles' split-K announcements (a fence and an atomic each) moved after
# the K loop (session 40's first form fenced at every tile's end, draining the words in flight).
#   1. benchmarks/cases/gemv_row_tiles_after_loop.json: the w4 pick on both 28672/8192 shapes and its row_tiles twins;
#      w3 n64 at split 4 / 8; the w2 x_ahead pick
#   2. the CPU tests' kernel cases (row_tiles included) on the GPU
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_row_tiles_after_loop.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"
time_cases 1 benchmarks/cases/gemv_row_tiles_after_loop.json "row_tiles, announced after the loop" row_tiles_after \
    200 20
k_tails_check 2
echo "--- total $(el)"
