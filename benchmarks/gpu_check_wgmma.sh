#!/bin/bash
# One device call (<= 10 min) that verifies the wgmma tile's default K loop (v19, words by TMA) where session 30
# ran out of device time, then times the tuned op beside Marlin; a short table last.
#   1. every tuner tile against the fp32 reference: N and M tails, split-K 1 and 3, bias, an x view
#   2. the tuned op eager, under torch.compile and in a CUDA graph
#   3. 2 shapes (28672x8192, 8192x28672), w4, M in {64, 256}: qcomp's tuned op, fp16 cuBLAS, Marlin (optimum-quanto)
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check_wgmma.sh OUT_DIR
# Marlin needs its wheel in ./.whl (bash ../shared/tools/get_wheels.sh here, then carry .whl); without it the
# Marlin column is skipped.
set -u
OUT=${1:?usage: bash benchmarks/gpu_check_wgmma.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARNING | tail -2
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,driver_version --format=csv,noheader

echo "--- 1. tuner tiles against the reference"
timeout 200 python3 benchmarks/check_wgmma.py benchmarks/cases/wgmma_tuner_tiles.json 2>&1 | tail -6
echo "check_tiles_rc=${PIPESTATUS[0]}"

echo "--- 2. eager, torch.compile, CUDA graph (elapsed $(( $(date +%s) - T0 )) s)"
timeout 120 python3 benchmarks/check_wgmma.py --graph 2>&1 | tail -6
echo "check_graph_rc=${PIPESTATUS[0]}"

echo "--- 3. tuned op beside fp16 and Marlin (elapsed $(( $(date +%s) - T0 )) s)"
PEERS="--no-peers"
if ls .whl/optimum_quanto-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
        2>&1 | grep -v WARNING | tail -2
    PEERS="--peers marlin-quanto-w4g128"
else
    echo "no .whl/optimum_quanto wheel: Marlin skipped"
fi
PYTHONPATH=$PWD/.site timeout $(( 570 - $(date +%s) + T0 )) python3 benchmarks/bench_kernels.py --out "$OUT/kernels" \
    --shapes 2 --bits 4 --ms 64,256 --grids uniform --hads 0 $PEERS --budget 300 2>&1 \
    | grep -vE "Warning|warn\(" | tail -16
echo "--- total $(( $(date +%s) - T0 )) s"
