#!/bin/bash
# One device call (<= 10 min): the wgmma tile with its dequantized weights in shared memory (KernelSpec.a_smem,
# gemm_wgmma._loop_smem), and session 32's untimed M=1 x-pair packing (b70a366):
#   1. the CPU tests' K-tail and x_ahead kernel cases compiled on the GPU, inputs inside NaN poison (the fp16 gemv
#      cases run the x pairs packed by PTX)
#   2. the a_smem specs of benchmarks/cases/wgmma_smem.json against the fp32 reference (N and M tails, split-K 1-3,
#      bias, an x view)
#   3. those cases timed beside the tuner's M=256 / M=64 picks and cuBLAS fp16 (time_specs.py)
#   4. the #5 M=1 matrix with the tuner at b = 4 (the 3.3x fp16 target; the x pairs now packed by PTX)
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_smem.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"

k_tails_check 1

wgmma_check 2 benchmarks/cases/wgmma_smem.json "a_smem specs"
time_cases 3 benchmarks/cases/wgmma_smem.json "a_smem" smem 240 24

echo "--- 4. M=1 matrix with the tuner, w4 $(el)"
timeout $(( 585 - $(date +%s) + T0 )) python3 benchmarks/bench_kernels.py --out "$OUT/kernels" --shapes 2 \
    --bits 4 --ms 1 --grids uniform --hads 0 --no-peers --budget 120 --workers 14 2>&1 \
    | grep -vE "Warning|warn\(" | tail -10
echo "--- total $(el)"
