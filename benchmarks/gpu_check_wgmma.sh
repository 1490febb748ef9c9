#!/bin/bash
# One device call (<= 10 min) that checks every wgmma tile the tuner offers and times the tuned op beside fp16 and
# Marlin; a short table last.
#   1. (optional) CASES=FILE: a cases file's specs checked against the reference (check_wgmma.py) and timed beside
#      fp16 (time_specs.py, at most CASES_S seconds, 150 by default), for tiles the tuner does not offer yet
#   2. every tuner tile (benchmarks/cases/wgmma_tuner_tiles.json) against the fp32 reference: N and M tails,
#      split-K 1 and 3, bias, an x view
#   3. the tuned op eager, under torch.compile and in a CUDA graph
#   4. 2 shapes (28672x8192, 8192x28672), w4, M in {64, 256}: qcomp's tuned op, fp16 cuBLAS, Marlin (optimum-quanto)
# Run from the repo root on the GPU machine:  [CASES=FILE] bash benchmarks/gpu_check_wgmma.sh OUT_DIR
# TOTAL_S=N caps the whole call at N seconds (570 by default; section 4 gets what is left). Marlin needs its wheel
# in ./.whl (bash ../shared/tools/get_wheels.sh here, then carry .whl); without it the Marlin column is skipped.
source "$(dirname "$0")/gpu_prelude.sh" "$@"

if [ -n "${CASES:-}" ]; then
    wgmma_check 1 "$CASES" "$(basename "$CASES" .json)"
    time_cases 1 "$CASES" "$(basename "$CASES" .json)" cases "${CASES_S:-150}" 24
fi
wgmma_check 2 benchmarks/cases/wgmma_tuner_tiles.json "tuner tiles"

echo "--- 3. eager, torch.compile, CUDA graph $(el)"
timeout 120 python3 benchmarks/check_wgmma.py --graph 2>&1 | tail -6
echo "check_graph_rc=${PIPESTATUS[0]}"

echo "--- 4. tuned op beside fp16 and Marlin $(el)"
PEERS="--no-peers"
if ls .whl/optimum_quanto-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site \
        .whl/optimum_quanto-*.whl 2>&1 | grep -v WARNING | tail -2
    PEERS="--peers marlin-quanto-w4g128"
else
    echo "no .whl/optimum_quanto wheel: Marlin skipped"
fi
PYTHONPATH=$PWD/.site timeout $(( ${TOTAL_S:-570} - $(date +%s) + T0 )) python3 benchmarks/bench_kernels.py \
    --out "$OUT/kernels" --shapes 2 --bits 4 --ms 64,256 --grids uniform --hads 0 $PEERS --budget 300 2>&1 \
    | grep -vE "Warning|warn\(" | tail -16
echo "--- total $(el)"
