#!/usr/bin/env bash
# The mission's command on one GPU runner, as a user runs it (no --tc-suite: the GPU suite and its
# variants): each bf16/fp32 variant alone (no -n) cold then with its compile cache restored, then
# the whole suite at -n 4 with the caches restored, RUNS_N4 times in a row. Every run goes through
# session_phases.py (where the wall time goes) with fresh Inductor/Triton dirs: only
# --tc-compile-cache carries over. One device call; logs and reports under $OUT; the tables last.
set -u
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if ! python3 -m pip install --no-deps --no-build-isolation -q -e . > "$OUT/install.log" 2>&1; then
  export PYTHONPATH=$PWD PYTEST_ADDOPTS="-p titan_conformance.plugin"
fi
CACHE=$(mktemp -d)/compile-cache.bin
run() {  # name, runs, then pytest options
  local name=$1 runs=$2; shift 2
  timeout "${PART_TIMEOUT:-200}" python3 benchmarks/session_phases.py --runs "$runs" --fresh-caches --out "$OUT/$name" -- \
    --pyargs titan_conformance -p no:cacheprovider --tc-compile-cache "$CACHE" \
    --tc-report-dir "$OUT/$name/report-{run}" "$@" > "$OUT/$name/table.txt" 2>&1
  echo "== $name (rc=$?)" >> "$OUT/table.txt"
  cat "$OUT/$name/table.txt" >> "$OUT/table.txt"
}
mkdir -p "$OUT"/{base-cold,base-cached,fp32-cold,fp32-cached,n4-cached}
run base-cold 1 --tc-variant base
run base-cached 1 --tc-variant base
run fp32-cold 1 --tc-variant fp32
run fp32-cached 1 --tc-variant fp32
PART_TIMEOUT=$((${PART_TIMEOUT:-200} * ${RUNS_N4:-3})) run n4-cached "${RUNS_N4:-3}" -n 4
python3 - "$OUT" <<'PY' >> "$OUT/table.txt"
import json, sys, pathlib
print("\nper variant (startup phases, median step, failed checks)")
for d in sorted(pathlib.Path(sys.argv[1]).glob("*/report-*")):
    r = json.loads((d / "report.json").read_text())
    for name, v in r["variants"].items():
        if v["status"] != "ran":
            continue
        run = r["runs"].get(name, {})
        st = run.get("startup", {})
        steps = sorted(s["seconds"] for s in run.get("steps", []))
        med = f"{steps[len(steps) // 2]:.3f}" if steps else "-"
        bad = [t["nodeid"].split("::")[-1] for t in r["tests"] if t["variant"] == name and t["outcome"] in ("failed", "error")]
        print(f"{d.parent.name}/{d.name:9} {name:5} {v.get('worker') or '-':4} startup={sum(st.values()):.1f}s "
              f"{' '.join(f'{k}={x:.1f}' for k, x in st.items())} step_med={med} failed={bad}")
PY
cat "$OUT/table.txt"
