#!/usr/bin/env bash
# The mission's command on one GPU runner, as a user runs it (no --tc-suite: the GPU suite and its
# variants), cold then with the compile cache restored, at -n 1 and -n 4. One device call; logs and
# reports under $OUT; a table of wall times and verdicts last.
set -u
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if ! python3 -m pip install --no-deps --no-build-isolation -q -e . > "$OUT/install.log" 2>&1; then
  export PYTHONPATH=$PWD PYTEST_ADDOPTS="-p titan_conformance.plugin"
fi
CACHE=$(mktemp -d)/compile-cache.bin
run() {  # name, workers, then extra options; fresh Inductor/Triton dirs: only --tc-compile-cache carries over
  local name=$1 n=$2; shift 2
  local start=$SECONDS
  TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d) timeout "${PART_TIMEOUT:-200}" \
    python3 -m pytest --pyargs titan_conformance -n "$n" -p no:cacheprovider --tc-compile-cache "$CACHE" \
    --tc-report-dir "$OUT/report-$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? wall=$((SECONDS - start))s $(tail -1 "$OUT/$name.log")" >> "$OUT/table.txt"
}
run n1-cold 1
run n1-cached 1
run n4-cached 4
python3 - "$OUT" <<'PY' >> "$OUT/table.txt"
import json, sys, pathlib
for d in sorted(pathlib.Path(sys.argv[1]).glob("report-*")):
    r = json.loads((d / "report.json").read_text())
    for name, v in r["variants"].items():
        run = r["runs"].get(name, {})
        st = run.get("startup", {})
        steps = [s["seconds"] for s in run.get("steps", [])]
        med = sorted(steps)[len(steps) // 2] if steps else None
        bad = [t["nodeid"].split("::")[-1] for t in r["tests"] if t["variant"] == name and t["outcome"] in ("failed", "error")]
        print(f"{d.name:18} {name:10} {v['status']:8} {v.get('worker') or '-':4} startup={sum(st.values()):.1f}s "
              f"{' '.join(f'{k}={x:.1f}' for k, x in st.items())} step_med={med} failed={bad}")
PY
cat "$OUT/table.txt"
