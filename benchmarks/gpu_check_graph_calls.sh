#!/bin/bash
# One device call (<= 10 min): how much of a timed call was the CUDA graph's own launch; the fused rotation done once
# per program (KernelSpec.had_once); where the M=1 GEMV's time goes.
#   1. the #5 M=1 matrix (2 shapes, b in {2, 3, 4, 8}, uniform, no rotation) with graphs of one call per weight copy
#      (QCOMP_BENCH_GRAPH_CALLS=1, the timing before session 37), then with graphs of >= 32 calls (the default now)
#   2. the M=1 matrix with the fused Hadamard 128 (the tuner now also tries had_once), graphs of >= 32 calls
#   3. benchmarks/cases/gemv_had_once.json: the per-step rotation, its scratch row and had_once side by side
#   4. Nsight Compute (speed of light, occupancy, warp states, stall reasons) of the M=1 w2 / w4 / w2 + had128 GEMV
#      picks, 28672x8192
#   5. M=256 w4 on both shapes, graphs of >= 32 calls and of one call per copy
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_graph_calls.sh OUT_DIR
source "$(dirname "$0")/gpu_prelude.sh" "$@"
bench() {  # SECTION CALLS OUTDIR MS BITS HADS
    echo "--- $1. M=$4 b=$5 had=$6, graphs of >= $2 calls $(el)"
    QCOMP_BENCH_GRAPH_CALLS=$2 timeout 200 python3 benchmarks/bench_kernels.py --out "$OUT/$3" --shapes 2 --bits "$5" \
        --ms "$4" --grids uniform --hads "$6" --no-peers --budget 150 --workers 14 2>&1 | grep -vE "Warning|warn\(" \
        | grep -E "^(fp16|qcomp|GPU)" | cut -c1-110
}
bench 1 1 m1_g1 1 4,2,3,8 0
bench 1 32 m1_g32 1 4,2,3,8 0
bench 2 32 m1_had 1 4,2,3,8 128
time_cases 3 benchmarks/cases/gemv_had_once.json "per-step rotation, scratch row, had_once" had_once 120 24
echo "--- 4. Nsight Compute, 28672x8192 M=1 $(el)"
SECS="--section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --metrics "
for r in long_scoreboard barrier membar wait short_scoreboard lg_throttle math_pipe_throttle no_instruction \
         drain mio_throttle not_selected selected dispatch_stall branch_resolving sleeping; do
    SECS="$SECS,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio"
done
SECS=${SECS/--metrics ,/--metrics }
for c in '{"bits":2,"variant":"gemv","block_m":1,"block_n":256,"block_k":128,"num_warps":4,"num_stages":2,"x_ahead":true}|8' \
         '{"bits":4,"variant":"gemv","block_m":1,"block_n":64,"block_k":128,"num_warps":2,"num_stages":2}|8' \
         '{"bits":2,"variant":"gemv","block_m":1,"block_n":128,"block_k":128,"num_warps":2,"num_stages":2,"had_block":128}|8'; do
    echo "== ${c%|*} split ${c#*|}"
    timeout 60 ncu $SECS -k regex:qlinear -s 2 -c 1 python3 benchmarks/ncu_qlinear.py "${c%|*}" --split "${c#*|}" \
        --profile 2>&1 | grep -E "Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Achieved Occupancy|Theoretical Occ|Registers Per|Block Limit|Waves Per SM|Issued Warp|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Grid Size|rel err|stalled"
done
bench 5 32 m256_g32 256 4 0
bench 5 1 m256_g1 256 4 0
echo "--- total $(el)"
