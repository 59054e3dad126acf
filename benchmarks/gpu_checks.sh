#!/usr/bin/env bash
# One device call: the GPU-only tests, then the conformance suite on CUDA for both profiles.
# Optional parts: STARTUP=1 (generator startup: cold without Python bytecode, then without and with the
# warm start: cold twice, a fresh runner restoring the compile cache the last cold run saved, warm;
# WARM_START_AB=0 leaves out the runs without it; STARTUP_BASELINE=DIR, an older checkout's root
# inside the tree, e.g. from `git archive REV titan_conformance suites benchmarks/startup.py`, adds
# a cold run of its startup.py before each cold run of ours),
# BENCH=1 (benchmark table; BENCH_SKIP=compile,capture leaves out the slow comparisons),
# EXACTNESS=1, CALIBRATE=1 (benchmarks/calibrate.py on qwen3-0.6b and its fp32 variant, 3 seeds, faults on
# FAULT_SEEDS, warm-up grid WARMUP_LRS and GRPO grid GRPO_LRS; CALIBRATE_TIMEOUT bounds it),
# GPU_TESTS (default: SUITES) runs the GPU-only tests, SUITE_PROFILES (default "qwen3-0.6b tiny-cpu"), TP=1 (needs 2 GPUs: the TP profile's suite on NCCL and the recompile measurement at
# the qwen3-0.6b shape), SUITES=0 (skip the single-GPU tests and suites). PART_TIMEOUT (seconds, default 420) bounds each
# part; TP_TIMEOUT (seconds) bounds each TP configuration of the recompile measurement.
# Logs go to $OUT and are packed into $OUT/logs.tgz; a short table is printed last.
set -u
OUT=${OUT:-$(mktemp -d)}
LOGS="$OUT/logs"
mkdir -p "$LOGS"
nvidia-smi -L | tee "$LOGS/gpu.txt"
if ! python3 -m pip install --no-deps --no-build-isolation -q -e . > "$LOGS/install.log" 2>&1; then
  echo "editable install failed (see install.log); running from the source tree" | tee -a "$LOGS/summary.txt"
  export PYTHONPATH=$PWD PYTEST_ADDOPTS="-p titan_conformance.plugin"
fi
python3 -c 'import torch, sys; print("torch", torch.__version__, "python", sys.version.split()[0])' | tee -a "$LOGS/summary.txt"
run() {  # name, then the command
  local name=$1; shift
  local start=$SECONDS
  timeout "${PART_TIMEOUT:-420}" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start))s $(grep -E '(passed|failed|error)' "$LOGS/$name.log" | tail -1)" >> "$LOGS/summary.txt"
}
suite() {  # name, suite, then extra pytest options
  local name=$1 profile=$2; shift 2
  run "$name" python3 -m pytest --pyargs titan_conformance --tc-suite "$profile" --tc-device cuda \
    --tc-report-dir "$LOGS/report-$name" -p no:cacheprovider -rA "$@"
}
if [ "${STARTUP:-0}" = 1 ]; then (  # a subshell: the parts after it run in the image's environment
  # The GPU image sets PYTHONDONTWRITEBYTECODE, so each process compiles the sources of every
  # torch module it imports again (8.6 s of a cold start under cProfile on an H200); a runner's
  # installed torch has its .pyc. The first run fills a bytecode prefix that the runs after it read.
  unset PYTHONDONTWRITEBYTECODE
  export PYTHONPYCACHEPREFIX TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR
  PYTHONPYCACHEPREFIX=$(mktemp -d)
  fresh_caches() { TORCHINDUCTOR_CACHE_DIR=$(mktemp -d); TRITON_CACHE_DIR=$(mktemp -d); }
  cache_file=$(mktemp -d)/compile.bin  # what a runner would keep between jobs
  fresh_caches; run startup-no-bytecode python3 benchmarks/startup.py --label no-bytecode --out "$LOGS"
  for i in 1 2; do  # warm start off and on, twice each: cold starts vary by a second or two
    if [ -n "${STARTUP_BASELINE:-}" ]; then
      fresh_caches; run startup-cold-baseline-$i env PYTHONPATH="$PWD/$STARTUP_BASELINE" \
        python3 "$STARTUP_BASELINE/benchmarks/startup.py" --label cold-baseline-$i --out "$LOGS"
    fi
    if [ "${WARM_START_AB:-1}" = 1 ]; then
      fresh_caches; run startup-cold-no-warm-start-$i python3 benchmarks/startup.py --label cold-no-warm-start-$i --out "$LOGS" --no-warm-start
    fi
    fresh_caches; run startup-cold-$i python3 benchmarks/startup.py --label cold-$i --out "$LOGS"
  done
  fresh_caches; run startup-cold python3 benchmarks/startup.py --label cold --out "$LOGS" --compile-cache "$cache_file"
  if [ "${WARM_START_AB:-1}" = 1 ]; then
    fresh_caches; run startup-restored-no-warm-start python3 benchmarks/startup.py --label restored-no-warm-start --out "$LOGS" --compile-cache "$cache_file" --no-warm-start
  fi
  fresh_caches; run startup-restored python3 benchmarks/startup.py --label restored --out "$LOGS" --compile-cache "$cache_file"
  if [ "${WARM_START_AB:-1}" = 1 ]; then
    run startup-warm-no-warm-start python3 benchmarks/startup.py --label warm-no-warm-start --out "$LOGS" --no-warm-start
  fi
  run startup-warm python3 benchmarks/startup.py --label warm --out "$LOGS"
) fi
if [ "${CALIBRATE:-0}" = 1 ]; then
  PART_TIMEOUT=${CALIBRATE_TIMEOUT:-420} run calibrate python3 benchmarks/calibrate.py --suite qwen3-0.6b --device cuda \
    --variants ,fp32 --seeds 0,1,2 --fault-seeds "${FAULT_SEEDS:-0}" --warmup-lrs "${WARMUP_LRS:-}" \
    --grpo-lrs "${GRPO_LRS:-}" --out "$LOGS"
  grep -E "^(warm-up picked|grpo lr|warmup lr=0.0003 seed=0)" "$LOGS/calibrate.log" >> "$LOGS/summary.txt"
  grep -A60 "^== " "$LOGS/calibrate.log" >> "$LOGS/summary.txt"
fi
[ "${BENCH:-0}" = 1 ] && run bench python3 benchmarks/bench_gpu.py --out "$LOGS" --skip "${BENCH_SKIP:-}"
if [ "${GPU_TESTS:-${SUITES:-1}}" = 1 ]; then
  run gpu-tests python3 -m pytest ${GPU_TEST_FILES:-tests/test_cudagraph_faults.py tests/test_cudagraph_policy.py tests/test_cuda_kernels.py tests/test_warm_start.py} -q -p no:cacheprovider
fi
if [ "${SUITES:-1}" = 1 ]; then
  for profile in ${SUITE_PROFILES:-qwen3-0.6b tiny-cpu}; do
    suite "suite-$profile" "$profile" -n 1 ${SUITE_ARGS:-}
    grep -E "^\| (Logprob|Recompile|CUDA|Budgets|Other)" "$LOGS/report-suite-$profile/summary.md" >> "$LOGS/summary.txt" 2>/dev/null
  done
fi
if [ "${TP:-0}" = 1 ]; then
  suite suite-tp2 tiny-cpu-tp2 -n 1
  run tp-qwen3 python3 benchmarks/tp_recompiles.py --suite qwen3-0.6b --tp 2 --device cuda --steps 2 \
    --configs "${TP_CONFIGS:-inductor:unwrap,inductor:no-unwrap,eager:no-unwrap}" --json "$LOGS/tp-qwen3.json" \
    ${TP_TIMEOUT:+--timeout "$TP_TIMEOUT"}
fi
if [ "${EXACTNESS:-0}" = 1 ]; then
  python3 benchmarks/graph_exactness.py > "$LOGS/exactness.txt" 2>&1
  CUBLAS_WORKSPACE_CONFIG=:4096:8 python3 benchmarks/graph_exactness.py >> "$LOGS/exactness.txt" 2>&1
  grep "size" "$LOGS/exactness.txt" >> "$LOGS/summary.txt"
fi
grep -h "compile+capture" "$LOGS"/startup-*.log >> "$LOGS/summary.txt" 2>/dev/null
[ -f "$LOGS/bench.log" ] && tail -13 "$LOGS/bench.log" >> "$LOGS/summary.txt"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && cp "$LOGS/summary.txt" "$OUT/summary.txt" && rm -rf "$LOGS"
cat "$OUT/summary.txt"
