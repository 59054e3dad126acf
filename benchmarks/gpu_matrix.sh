#!/usr/bin/env bash
# The mission's command on one GPU runner, as a user runs it (no --tc-suite: the GPU suite and its
# variants): each bf16/fp32 variant alone (no -n) cold then with its compile cache restored, then
# the whole suite at -n 4 with the caches restored, RUNS_N4 times in a row. Every run goes through
# session_phases.py (where the wall time goes) with fresh Inductor/Triton dirs: only
# --tc-compile-cache carries over. One device call; logs and reports packed in $OUT/matrix.tgz; the
# tables last. PARTS picks parts (default: base-cold base-cached fp32-cold fp32-cached n4-cached);
# n1-cached runs the whole suite at -n 1, n1-cold and n4-cold at -n 1 and -n 4 from no cache; faults plants each of FAULTS (tests/faults.py factories,
# through --tc-system, as a user's own provider would come) in the variants FAULT_VARIANTS (default
# base,fp32: the gate's own; bf16 alone cannot see a fault below its rounding, such as a 1%-off RoPE
# base), each run with a copy of the caches (a planted system must not write into the clean runs'
# files), and lists the checks that failed per variant: a fault that fails no check is a miss.
set -u
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if ! python3 -m pip install --no-deps --no-build-isolation -q -e . > "$OUT/install.log" 2>&1; then
  export PYTHONPATH=$PWD PYTEST_ADDOPTS="-p titan_conformance.plugin"
fi
# A runner's installed packages have their bytecode (pip compiles it); the GPU image sets
# PYTHONDONTWRITEBYTECODE, so each of a session's processes would compile the sources of every
# module it imports again (seconds each, at every run). Bytecode under a prefix, made before the runs.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX
PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-$(mktemp -d)}  # a caller may share it with later runs
start=$SECONDS
python3 -m compileall -q -j 0 $(python3 -c 'import importlib, os
for m in ("os", "torch", "triton", "sympy", "numpy", "jinja2", "markupsafe", "_pytest", "pluggy", "xdist", "execnet",
          "networkx", "filelock", "fsspec", "safetensors", "titan_conformance"):
    try:
        print(os.path.dirname(importlib.import_module(m).__file__))
    except ImportError:
        pass') > /dev/null 2>&1
echo "bytecode compiled in $((SECONDS - start)) s (not in any run below)" > "$OUT/table.txt"
CACHE=${CACHE:-$(mktemp -d)/compile-cache.bin}  # each variant its own file beside it
run() {  # name, runs, then pytest options
  local name=$1 runs=$2; shift 2
  timeout "${PART_TIMEOUT:-200}" python3 benchmarks/session_phases.py --runs "$runs" --fresh-caches --out "$OUT/$name" -- \
    --pyargs titan_conformance -p no:cacheprovider --tc-compile-cache "${CACHE_RUN:-$CACHE}" \
    --tc-report-dir "$OUT/$name/report-{run}" "$@" > "$OUT/$name/table.txt" 2>&1
  echo "== $name (rc=$?)" >> "$OUT/table.txt"
  cat "$OUT/$name/table.txt" >> "$OUT/table.txt"
}
PARTS=${PARTS:-base-cold base-cached fp32-cold fp32-cached n4-cached}
for part in $PARTS; do
  mkdir -p "$OUT/$part"
  case $part in
    n4-cached) PART_TIMEOUT=$((${PART_TIMEOUT:-200} * ${RUNS_N4:-3})) run n4-cached "${RUNS_N4:-3}" -n 4 ;;
    n1-cached) run n1-cached 1 -n 1 ;;
    n1-cold|n4-cold) CACHE_RUN=$(mktemp -d)/compile-cache.bin run "$part" 1 -n "${part:1:1}" ;;  # a cache of its own
    faults)
      for fault in ${FAULTS:-generator_rope_theta_one_percent_off skipped_weight_sync capture_size_left_out}; do
        copy=$(mktemp -d)
        cp "$CACHE"* "$copy" 2>/dev/null  # every variant's file
        start=$SECONDS
        PYTHONPATH=$PWD/tests${PYTHONPATH:+:$PYTHONPATH} timeout "${PART_TIMEOUT:-200}" python3 -m pytest \
          --pyargs titan_conformance -p no:cacheprovider --tc-system "faults:$fault" --tc-variant "${FAULT_VARIANTS:-base,fp32}" \
          --tc-compile-cache "$copy/$(basename "$CACHE")" --tc-report-dir "$OUT/faults/report-$fault" -rf > "$OUT/faults/$fault.log" 2>&1
        rc=$?
        failed=$(grep -oE '^FAILED [^ ]+' "$OUT/faults/$fault.log" | sed -E 's/.*:://' | tr '\n' ' ')
        echo "$fault rc=$rc $((SECONDS - start))s ${failed:-MISSED: no check failed}" >> "$OUT/faults/table.txt"
      done
      { echo "== faults (planted through --tc-system in ${FAULT_VARIANTS:-base,fp32})"; cat "$OUT/faults/table.txt"; } >> "$OUT/table.txt" ;;
    *) run "$part" 1 --tc-variant "${part%%-*}" ;;  # base-cold: variant base, cold
  esac
done
python3 - "$OUT" <<'PY' >> "$OUT/table.txt"
import json, sys, pathlib
print("\nper variant (startup phases, median step, tests' time and the slowest, failed checks)")


def seconds(test):
    return f"{test['nodeid'].split('::')[-1].split('[')[0]}={test.get('duration_s') or 0:.1f}"


for d in sorted(p for p in pathlib.Path(sys.argv[1]).glob("*/report-*") if p.parent.name != "faults"):
    r = json.loads((d / "report.json").read_text())
    for name, v in r["variants"].items():
        if v["status"] != "ran":
            continue
        run = r["runs"].get(name, {})
        st, cache = run.get("startup", {}), run.get("compile", {}).get("cache", {})
        steps = sorted(s["seconds"] for s in run.get("steps", []))
        med = f"{steps[len(steps) // 2]:.3f}" if steps else "-"
        tests = [t for t in r["tests"] if t["variant"] == name]
        bad = [t["nodeid"].split("::")[-1] for t in tests if t["outcome"] in ("failed", "error")]
        slow = sorted(tests, key=lambda t: -(t.get("duration_s") or 0))[:4]
        print(f"{d.parent.name}/{d.name:9} {name:5} {v.get('worker') or '-':4} startup={sum(st.values()):.1f}s "
              f"{' '.join(f'{k}={x:.1f}' for k, x in st.items())} step_med={med} "
              f"triton_kernels_restored/saved={cache.get('restored_kernels', '-')}/{cache.get('saved_kernels', '-')} "
              f"tests={sum(t.get('duration_s') or 0 for t in tests):.1f}s ({', '.join(map(seconds, slow))}) failed={bad}")
PY
# The device tool brings back a few files only: the parts' logs and reports in one archive.
(cd "$OUT" && tar czf matrix.tgz $PARTS && rm -rf $PARTS)
cat "$OUT/table.txt"
