#!/usr/bin/env bash
# Every GPU check in one call, for a machine with CUDA and the package importable
# (PYTHONPATH=. or installed): CUDA-vs-CPU correctness and the 1e8-edge GCN timing,
# the test suite (its CUDA tests run there), and with --bench the CUDA bench suites and
# the many-target benchmark. Logs go to $OUT (default ./gpu_out).
#   bash benchmarks/gpu_run.sh [--bench]
set -uo pipefail
out="${OUT:-gpu_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
nvidia-smi -L || true
timeout 170 "$py" benchmarks/gpu_check.py --edges 1e8 --repeats 3 >"$out/gpu_check.txt" 2>&1
echo "gpu_check rc=$?"; tail -14 "$out/gpu_check.txt"
workers=$("$py" -c "import xdist" 2>/dev/null && echo "-n $(($(nproc) - 2))")
timeout 230 "$py" -m pytest -q -p no:cacheprovider -rfEs $workers >"$out/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "passed|failed|SKIPPED|FAILED|ERROR" "$out/pytest.txt" | tail -25
if [[ "${1:-}" == "--bench" ]]; then
  tables=$(mktemp -d)  # (only bench.md is kept: few files travel back from a lent machine)
  timeout 180 "$py" -m sparse_lrp.cli bench --quick --device cuda --suites graphs,explainers,dense,sparse \
    --max-edges 1e8 --no-plot --out "$tables" >"$out/bench.txt" 2>&1
  echo "bench rc=$?"; cp "$tables/bench.md" "$out/" 2>/dev/null; tail -5 "$out/bench.txt"
  timeout 60 "$py" benchmarks/bench_many_targets.py --device cuda >"$out/many.txt" 2>&1
  echo "many rc=$?"; tail -6 "$out/many.txt"
fi
