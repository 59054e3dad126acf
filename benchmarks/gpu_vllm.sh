#!/usr/bin/env bash
# The `vllm` variant of the GPU suite on one GPU runner, with vLLM from the kit in ../shared/vllm-kit
# (how our GPU machine gets what a user's runner has from pip), and the `base` variant (native
# generator) in the same call, so that their startup phases and step times compare within one run.
# Run from the repository root on the device machine, with the kit folder carried:
#   KIT=.vw1 bash benchmarks/gpu_vllm.sh
# Installs the kit into /tmp/site and runs its smoke tests (SMOKE=kernels|imports|none for fewer), installs
# this package (its pytest11 and vllm.general_plugins entry points), then runs each of VARIANTS
# alone, then each of FAULTS (planted faults of tests/vllm_faults.py, run in the vllm variant on the
# checks of FAULT_K). Logs, the reports (packed in reports.tgz: $OUT takes few files) and table.txt
# land in $OUT.
set -u
OUT=${OUT:-$(mktemp -d)}
KIT=${KIT:?KIT: the kit folder carried with the call, e.g. .vw1}
start=$SECONDS
# SMOKE=kernels: the import and kernel smoke tests, not the engine's (the vllm variant starts one)
SMOKE=${SMOKE:-all}
SMOKE=${SMOKE/kernels/imports} bash "$KIT/install_on_device.sh" > "$OUT/kit.log" 2>&1
echo "kit install + smoke ($SMOKE) rc=$?" > "$OUT/table.txt"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ "$SMOKE" = kernels ]; then
  python3 "$KIT/smoke_kernels.py" >> "$OUT/kit.log" 2>&1
  echo "kernel smoke rc=$?" >> "$OUT/table.txt"
fi
echo "kit: $((SECONDS - start)) s" >> "$OUT/table.txt"
python3 -m pip install --no-deps --no-build-isolation -q -e . > "$OUT/install.log" 2>&1
reports=$(mktemp -d)
suite() {  # NAME ARGS...: one pytest session of the GPU suite, its log and report under NAME
  local name=$1 start=$SECONDS
  shift
  timeout "${VARIANT_TIMEOUT:-300}" python3 -m pytest --pyargs titan_conformance --tc-suite qwen3-0.6b \
    -p no:cacheprovider -rA --tc-report-dir "$reports/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name rc=$? wall=$((SECONDS - start)) s" >> "$OUT/table.txt"
  grep -E "^(PASSED|FAILED|SKIPPED|ERROR) |^=+ .* in [0-9.]+s" "$OUT/$name.log" | cut -c1-400 >> "$OUT/table.txt"
  tar czf "$OUT/reports.tgz" -C "$reports" .  # after each session: a later one may run out of time
}
for variant in ${VARIANTS-vllm base}; do
  suite "$variant" --tc-variant "$variant"
done
for fault in ${FAULTS:-}; do
  PYTHONPATH=$PWD/tests:$PYTHONPATH suite "fault-$fault" --tc-variant vllm --tc-system "vllm_faults:$fault" \
    -k "${FAULT_K:-test_cudagraphs or test_logprob_parity}"
done
cat "$OUT/table.txt"
