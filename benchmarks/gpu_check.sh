#!/bin/bash
# One device call (<= 10 min) that re-measures the open targets of issues 5 and 7 and prints a short table last:
#   1. kernels, 28672x8192, M=1, b in {2,3,4,8}, +-Hadamard 128 (issue 5: x copy, x fp16, had overhead), tinygemm
#   2. decode, Llama-3-8B architecture, batch 1, budget 3.5, torch.compile glue (issue 7: x bf16)
#   3. Marlin (optimum-quanto) at M = 1 and 16, in its own process (a fault there must not lose 1 and 2)
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_check.sh OUT_DIR
# Peers need their wheels in ./.whl (bash ../shared/tools/get_wheels.sh here, then carry .whl); without them the
# Marlin row is skipped. Environment passes through (e.g. QCOMP_TUNE_TIMER=do_bench for the old tuner timer).
set -u
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
T0=$(date +%s)
left() { echo $(( $1 - $(date +%s) + T0 )); }
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARNING | tail -2
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,driver_version --format=csv,noheader

echo "--- 1. kernels 28672x8192 M=1"
timeout 200 python3 benchmarks/bench_kernels.py --out "$OUT/kernels" --shapes 1 --bits 2,3,4,8 --ms 1 \
    --grids uniform --hads 0,128 --peers tinygemm-w4g128 --budget 140 --workers 14 2>&1 | grep -vE "Warning|warn\(" | tail -14

echo "--- 2. decode 3.5 batch 1 (elapsed $(( $(date +%s) - T0 )) s)"
timeout $(left 470) python3 benchmarks/gpu_decode.py --torch-compile --budgets 3.5 --batches 1 \
    --sensitivity-file benchmarks/results/sensitivity_llama3_8b_random_decode_h100.json --out "$OUT/decode" \
    2>&1 | grep -vE "Warning|warn\(" | tail -8

echo "--- 3. Marlin (elapsed $(( $(date +%s) - T0 )) s)"
if ls .whl/optimum_quanto-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
        2>&1 | grep -v WARNING | tail -2
    PYTHONPATH=$PWD/.site timeout $(left 585) python3 benchmarks/bench_kernels.py --out "$OUT/marlin" --shapes 1 \
        --bits 4 --ms 1,16 --grids uniform --hads 0 --peers marlin-quanto-w4g128 --budget 60 --workers 14 2>&1 \
        | grep -vE "Warning|warn\(" | grep -E "marlin|Error" | tail -4
else
    echo "no .whl/optimum_quanto wheel: Marlin skipped"
fi

echo "--- summary (total $(( $(date +%s) - T0 )) s)"
python3 benchmarks/gpu_check_summary.py "$OUT"
