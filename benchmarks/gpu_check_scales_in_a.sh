#!/bin/bash
# One device call (<= 10 min): the wgmma TMA loop with the group scales multiplied into A (KernelSpec.a_scales on
# the wgmma variant: one accumulator, 128 registers at m128 n128 s2, so two programs per SM), stream-K over it
# (KernelSpec.stream_k: the cases' split is the programs per SM) and session 33's untimed GEMV L2 bulk prefetch
# (KernelSpec.l2_ahead):
#   1. the CPU tests' K-tail, x_ahead and l2_ahead kernel cases compiled on the GPU, inputs inside NaN poison
#   2. the wgmma specs of benchmarks/cases/wgmma_scales_in_a.json against the fp32 reference (N and M tails,
#      split-K 1-3 (stream_k: 1-3 programs per SM), bias, an x view)
#   3. those cases timed beside the tuner's picks and cuBLAS fp16 (time_specs.py)
#   4. the tuner's M=1 picks with l2_ahead 0, 3 and 6 (benchmarks/cases/gemv_m1_l2_ahead.json)
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_scales_in_a.sh OUT_DIR
# (TOTAL_S=N caps the whole call at N seconds, 585 by default: section 4 gets what is left; SKIP_K_TAILS=1 skips
# section 1 when the device time left is short)
source "$(dirname "$0")/gpu_prelude.sh" "$@"

[ "${SKIP_K_TAILS:-0}" = 1 ] || k_tails_check 1
wgmma_check 2 benchmarks/cases/wgmma_scales_in_a.json "wgmma a_scales and stream_k specs"
time_cases 3 benchmarks/cases/wgmma_scales_in_a.json "wgmma a_scales and stream_k" sa 200 16
time_cases 4 benchmarks/cases/gemv_m1_l2_ahead.json "l2_ahead" l2 $(( ${TOTAL_S:-585} - $(date +%s) + T0 )) 13
echo "--- total $(el)"
