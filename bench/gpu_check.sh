#!/usr/bin/env bash
# Everything the suite checks and measures on a lent GPU machine, in one call of under 9 minutes:
# the Triton kernels' tests compiled for the GPU, then the `gpu-target` and `gpu` sweeps (results and
# report each). Every measurement goes through the sweeps, so it lands in results.jsonl and the report.
#
#   OUT=/some/dir bash bench/gpu_check.sh        # run from the repository root
#
# The machine's image already has torch, triton, pandas, matplotlib, pytest-benchmark and
# nvidia-ml-py; nothing is installed except this project itself (--no-deps) when it is not importable.
# Every stage has its own time limit, so that a slow compilation or a slow sweep point cannot eat
# the next stage's time; a sweep cut short keeps its points and still gets its report; the script goes
# on after a failed stage and exits non-zero at the end.
# Logs: $OUT/gpu_check.log (everything), $OUT/<stage>.log. Results: $OUT/gpu-target/, $OUT/gpu/.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the output directory}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

# Seconds per stage (100 + 100 + 240, plus 30 per report of a cut-short sweep): under 9 minutes in all.
TESTS_S=${TESTS_S:-100}
TARGET_S=${TARGET_S:-100}
SWEEP_S=${SWEEP_S:-240}
PYTHON=${PYTHON:-python}
unset TRITON_INTERPRET  # compile for the GPU: the interpreter is for machines without one

failed=()
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log, remember failures
    local name=$1 seconds=$2
    shift 2
    echo "=== $name (limit ${seconds}s): $* ($(date +%T))"
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$seconds" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start))s"
    if [ "$rc" -ne 0 ]; then failed+=("$name (exit $rc$([ "$rc" -eq 124 ] && echo ', time limit'))"); fi
}

sweep() {  # sweep NAME SECONDS: run a shipped sweep into $OUT/NAME; build the report if the run was cut short
    stage "$1" "$2" "$PYTHON" -m bench.cli run "$1" --out "$OUT/$1"
    if [ -f "$OUT/$1/results.jsonl" ] && [ ! -f "$OUT/$1/report.html" ]; then
        stage "$1-report" 30 "$PYTHON" -m bench.cli report "$OUT/$1"
    fi
}

echo "=== environment ($(date -Is))"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true

# python -m from the repository root finds the packages; install only where they still do not import
if ! "$PYTHON" -c "import implementations, bench.cli" 2>/dev/null; then
    stage install 120 "$PYTHON" -m pip install --no-deps -e .
fi

# 1. correctness on the GPU: output and every gradient against tlstm_naive (compiled kernels, no interpreter)
stage tests "$TESTS_S" "$PYTHON" -m pytest tests/test_fused_triton.py -q -x -p no:cacheprovider
# 2. the kernels' tuning target (naive, fused, cuDNN at B 1/16, M 64, L 8, T 1024)
sweep gpu-target "$TARGET_S"
# 3. fused vs cuDNN over depth, batch, dtype and mode
sweep gpu "$SWEEP_S"

echo "=== done ($(date +%T)), ${SECONDS}s in all"
if [ "${#failed[@]}" -ne 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
