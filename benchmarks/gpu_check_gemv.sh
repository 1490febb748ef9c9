#!/bin/bash
# One device call (<= 10 min) for the M=1 GEMV after session 32, whose last changes ran out of device time:
#   1. the CPU tests' K-tail and x_ahead kernel cases compiled on the GPU, inputs inside NaN poison (the fp16 gemv
#      cases run the x pairs now packed by PTX, b70a366)
#   2. A/B of this tree's render.py against OLD_RENDER (default .gpu/old_render_7acbefd.py: the text before b70a366)
#      on the tuner's M=1 picks (benchmarks/cases/gemv_m1_picks.json), old and new alternating, 2 rounds
#   3. the #5 M=1 matrix with the tuner (w2 picks now take x_ahead): 2 shapes, b in {2, 3, 4, 8}, uniform, no rotation
# Make the old text first, here:  mkdir -p .gpu && git show 7acbefd:codegen/render.py > .gpu/old_render_7acbefd.py
# then carry .gpu. Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_gemv.sh OUT_DIR [OLD_RENDER]
source "$(dirname "$0")/gpu_prelude.sh" "$@"
OLD=${2:-.gpu/old_render_7acbefd.py}

k_tails_check 1

echo "--- 2. A/B against $OLD $(el)"
if [ -f "$OLD" ]; then
    timeout 220 python3 benchmarks/ab_kernels.py benchmarks/cases/gemv_m1_picks.json --old "$OLD" --rounds 2 2>&1 \
        | grep -vE "Warning|warn\(" | tail -16
    echo "ab_rc=${PIPESTATUS[0]}"
else
    echo "no $OLD: A/B skipped (see this script's header)"
fi

m1_matrix 3 580 12 --bits 2,3,4,8 --hads 0 --budget 200
echo "--- total $(el)"
