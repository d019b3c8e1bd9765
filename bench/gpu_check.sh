#!/usr/bin/env bash
# Issue 7 on a lent GPU machine, in about 8 minutes: the Triton kernels' tests compiled for the GPU,
# the issue's figures (bench/gpu_figures.py), then the `gpu` sweep and its HTML report.
#
#   OUT=/some/dir bash bench/gpu_check.sh        # run from the repository root
#
# The machine's image already has torch, triton, pandas, matplotlib, pytest-benchmark and
# nvidia-ml-py; nothing is installed except this project itself (--no-deps) when it is not importable.
# Every stage has its own time limit, so that a slow compilation or a slow sweep point cannot eat
# the next stage's time; the script goes on after a failed stage and exits non-zero at the end.
# Logs: $OUT/gpu_check.log (everything), $OUT/<stage>.log. Results: $OUT/figures/gpu_figures.json,
# $OUT/gpu/ (results.jsonl, report.html).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the output directory}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

# Seconds per stage; the sum stays under 8 minutes with room for start-up.
TESTS_S=${TESTS_S:-100}
FIGURES_S=${FIGURES_S:-90}
SWEEP_S=${SWEEP_S:-270}   # the sweep resumes: a cut-short run keeps its points and gets a report
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

echo "=== environment ($(date -Is))"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
"$PYTHON" - <<'EOF' || true
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as error:
    print("triton missing:", error)
EOF

# python -m from the repository root finds the packages; install only where they still do not import
if ! "$PYTHON" -c "import implementations, bench.cli" 2>/dev/null; then
    stage install 120 "$PYTHON" -m pip install --no-deps -e .
fi

# 1. correctness on the GPU: output and every gradient against tlstm_naive (compiled kernels, no interpreter)
stage tests "$TESTS_S" "$PYTHON" -m pytest tests/test_fused_triton.py -q -x -p no:cacheprovider
# 2. the issue's figures: B=16 and B=1, M=64, P=8 (8 layers), T=1024, forward and training
stage figures "$FIGURES_S" "$PYTHON" bench/gpu_figures.py --out "$OUT/figures"
# 3. the gpu sweep; if its time runs out, the points measured so far are kept and reported
stage sweep "$SWEEP_S" "$PYTHON" -m bench.cli run gpu --out "$OUT/gpu"
if [ -f "$OUT/gpu/results.jsonl" ] && [ ! -f "$OUT/gpu/report.html" ]; then
    stage report 60 "$PYTHON" -m bench.cli report "$OUT/gpu"
fi

echo "=== done ($(date +%T)), ${SECONDS}s in all"
if [ "${#failed[@]}" -ne 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
