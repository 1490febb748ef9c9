#!/bin/bash
# One device call (<= 10 min): the wgmma TMA loop with the group scales multiplied into A (KernelSpec.a_scales on
# the wgmma variant: one accumulator, 128 registers at m128 n128 s2, so two programs per SM) and session 33's
# untimed GEMV L2 bulk prefetch (KernelSpec.l2_ahead):
#   1. the CPU tests' K-tail, x_ahead and l2_ahead kernel cases compiled on the GPU, inputs inside NaN poison
#   2. the wgmma specs of benchmarks/cases/wgmma_scales_in_a.json against the fp32 reference (N and M tails,
#      split-K 1-3, bias, an x view)
#   3. those cases timed beside the tuner's picks and cuBLAS fp16 (time_specs.py)
#   4. the tuner's M=1 picks with l2_ahead 0, 3 and 6 (benchmarks/cases/gemv_m1_l2_ahead.json)
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_scales_in_a.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"

k_tails_check 1

echo "--- 2. wgmma a_scales specs against the reference $(el)"
timeout 120 python3 benchmarks/check_wgmma.py benchmarks/cases/wgmma_scales_in_a.json 2>&1 | tail -12
echo "check_sa_rc=${PIPESTATUS[0]}"

echo "--- 3. wgmma a_scales timed $(el)"
timeout 200 python3 benchmarks/time_specs.py benchmarks/cases/wgmma_scales_in_a.json --out "$OUT/sa" 2>&1 \
    | grep -vE "Warning|warn\(" | tail -20
echo "time_sa_rc=${PIPESTATUS[0]}"

echo "--- 4. l2_ahead timed $(el)"
timeout $(( 585 - $(date +%s) + T0 )) python3 benchmarks/time_specs.py benchmarks/cases/gemv_m1_l2_ahead.json \
    --out "$OUT/l2" 2>&1 | grep -vE "Warning|warn\(" | tail -18
echo "time_l2_rc=${PIPESTATUS[0]}"
echo "--- total $(el)"
