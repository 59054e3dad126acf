#!/usr/bin/env bash
# One device call: the GPU-only tests, then the conformance suite on CUDA for both profiles.
# Logs go to $OUT; a short table is printed last.
set -u
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/gpu.txt"
if ! python3 -m pip install --no-deps --no-build-isolation -q -e . > "$OUT/install.log" 2>&1; then
  echo "editable install failed (see install.log); running from the source tree" | tee -a "$OUT/summary.txt"
  export PYTHONPATH=$PWD PYTEST_ADDOPTS="-p titan_conformance.plugin"
fi
python3 -c 'import torch, sys; print("torch", torch.__version__, "python", sys.version.split()[0])' | tee -a "$OUT/summary.txt"
run() {  # name, then the command
  local name=$1; shift
  local start=$SECONDS
  timeout 480 "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start))s $(grep -E '(passed|failed|error)' "$OUT/$name.log" | tail -1)" >> "$OUT/summary.txt"
}
[ "${BENCH:-0}" = 1 ] && run bench python3 benchmarks/bench_gpu.py --out "$OUT"
run gpu-tests python3 -m pytest tests/test_cudagraph_faults.py tests/test_cudagraph_policy.py -q -p no:cacheprovider
run suite-qwen3 python3 -m pytest --pyargs titan_conformance -n 1 --tc-suite qwen3-0.6b --tc-device cuda -p no:cacheprovider -rA
run suite-tiny python3 -m pytest --pyargs titan_conformance -n 1 --tc-suite tiny-cpu --tc-device cuda -p no:cacheprovider -rA
if [ "${EXACTNESS:-0}" = 1 ]; then
  python3 benchmarks/graph_exactness.py > "$OUT/exactness.txt" 2>&1
  CUBLAS_WORKSPACE_CONFIG=:4096:8 python3 benchmarks/graph_exactness.py >> "$OUT/exactness.txt" 2>&1
  grep "size" "$OUT/exactness.txt" >> "$OUT/summary.txt"
fi
cat "$OUT/summary.txt"
[ -f "$OUT/bench.log" ] && tail -8 "$OUT/bench.log"
