# Sourced by the benchmarks/gpu_check_*.sh scripts as their first step on the GPU machine:
#     source "$(dirname "$0")/gpu_prelude.sh" "$@"
# takes OUT_DIR ($1), goes to the repo root, installs the project (editable, no dependencies), prints the card, and
# defines el (seconds since the start, for the section lines), k_tails_check (benchmarks/check_k_tails_gpu.py:
# the CPU tests' K-tail, x_ahead and l2_ahead kernel cases compiled on the GPU, inputs inside NaN poison),
# wgmma_check (check_wgmma.py over a cases file's wgmma specs), time_cases (time_specs.py over a cases file) and
# m1_matrix (bench_kernels.py's M=1 rows with the tuner).
set -u
OUT=${1:?usage: bash $0 OUT_DIR}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
el() { echo "(elapsed $(( $(date +%s) - T0 )) s)"; }
k_tails_check() {
    echo "--- $1. K tails, x_ahead and l2_ahead cases on the GPU $(el)"
    timeout 240 python3 benchmarks/check_k_tails_gpu.py 2>&1 | tail -6
    echo "check_k_tails_rc=${PIPESTATUS[0]}"
}
wgmma_check() {  # SECTION CASES_JSON WHAT
    echo "--- $1. $3 against the reference $(el)"
    timeout 150 python3 benchmarks/check_wgmma.py "$2" 2>&1 | tail -12
    echo "check_wgmma_rc=${PIPESTATUS[0]}"
}
time_cases() {  # SECTION CASES_JSON WHAT OUT_SUBDIR TIMEOUT_S ROWS
    echo "--- $1. $3 timed $(el)"
    timeout "$5" python3 benchmarks/time_specs.py "$2" --out "$OUT/$4" --workers "${WORKERS:-14}" 2>&1 | grep -vE "Warning|warn\(" | tail -"$6"
    echo "time_$4_rc=${PIPESTATUS[0]}"
}
m1_matrix() {  # SECTION TOTAL_S ROWS BENCH_ARGS...: the #5 M=1 matrix with the tuner (2 shapes, uniform, no peers)
    echo "--- $1. M=1 matrix with the tuner $(el)"  # in what is left of TOTAL_S seconds since the prelude
    timeout $(( $2 - $(date +%s) + T0 )) python3 benchmarks/bench_kernels.py --out "$OUT/kernels" --shapes 2 --ms 1 \
        --grids uniform --no-peers --workers 14 "${@:4}" 2>&1 | grep -vE "Warning|warn\(" | tail -"$3"
}
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARNING | tail -2
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,driver_version --format=csv,noheader
