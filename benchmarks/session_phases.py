"""Where the wall time of a suite session goes, outside the checks as well as in them.

    python benchmarks/session_phases.py [--runs N] [--fresh-caches] [--out DIR] -- <pytest arguments>

e.g. `-- --pyargs titan_conformance -n 1 --tc-variant base`. Runs `python -m pytest <arguments>`
N times with `session_probe.py` loaded in every process of the session, and prints per run: the
controller's start-up (interpreter, imports, input checks), the workers' start-up (spawn, imports,
GPU pinning, collection), the tests (build, run, checks), the workers' exit (from their last test to their exit handlers,
and for the worker that ran the last test, which part of its end took it),
the controller's end (waiting for the workers' processes to end, the report, the summary), its own
teardown, the wall time, pytest's own clock, and the share of the wall that no test ran in. Under `-n 0` there are no
workers and the tests run in the controller. `{run}` in an argument becomes the run's number (a
report folder per run); --fresh-caches gives every run empty Inductor and Triton cache folders, so
that only a --tc-compile-cache file carries compiled code from one run to the next.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def phases(marks: list[dict], launched: float, exited: float) -> dict[str, float | None]:
    """Seconds per phase of one session from the probe's marks (see the module docstring)."""
    workers = sorted({m["who"] for m in marks} - {"controller"})
    runners = workers or ["controller"]

    def at(who: str, point: str) -> list[float]:
        return [m["t"] for m in marks if m["who"] == who and m["point"] == point]

    def first(who: str, point: str) -> float:
        return min(at(who, point))

    test_start = min(min(at(w, "test_start")) for w in runners if at(w, "test_start"))
    test_end = max(max(at(w, "test_finish")) for w in runners if at(w, "test_finish"))
    out: dict[str, float | None] = {
        "controller start-up": first("controller", "configured") - launched,
    }
    if workers:
        out["workers spawn + start-up"] = max(first(w, "collected") for w in workers) - first("controller", "configured")
        out["tests (first start to last finish)"] = test_end - test_start
        exits = [max(at(w, "atexit")) for w in workers if at(w, "atexit")]
        out["workers: last test to exit handlers"] = max(exits) - test_end if exits else None
        out.update(_last_worker_end(marks, max(workers, key=lambda w: max(at(w, "test_finish"), default=0.0)), test_end))
    else:
        out["collection"] = test_start - first("controller", "configured")
        out["tests (first start to last finish)"] = test_end - test_start
    out["controller: last test to its summary"] = first("controller", "unconfigured") - test_end
    if at("controller", "sessionfinished"):
        out["  of which sessionfinish"] = first("controller", "sessionfinished") - first("controller", "sessionfinish")
    out["controller teardown + exit"] = exited - first("controller", "unconfigured")
    if not workers and at("controller", "atexit"):
        out["  of which atexit handlers"] = max(at("controller", "atexit")) - first("controller", "unconfigured")
        out["  of which interpreter teardown"] = exited - max(at("controller", "atexit"))
    out["wall"] = exited - launched
    out["outside the tests"] = out["wall"] - out["tests (first start to last finish)"]
    return out


def _last_worker_end(marks: list[dict], worker: str, test_end: float) -> dict[str, float]:
    """Where the worker that ran the last test spends the time from it to its exit handlers: up to
    its sessionfinish, in it (xdist sends `workerfinished` at its end), its unconfigure (pytest's
    closing garbage collections follow it), then waiting for the controller's exit message."""
    points = ["sessionfinish", "sessionfinished", "unconfigured", "atexit"]
    seen = {m["point"]: m["t"] for m in marks if m["who"] == worker and m["point"] in points}
    if len(seen) < len(points):
        return {}
    names = ["  of which to its sessionfinish", "  of which its sessionfinish", "  of which to its unconfigure end",
             "  of which until its exit handlers"]
    times = [test_end, *(seen[p] for p in points)]
    return {name: b - a for name, a, b in zip(names, times, times[1:])}


def run_once(pytest_args: list[str], log: Path, fresh_caches: bool) -> tuple[dict, str]:
    with tempfile.TemporaryDirectory(prefix="tc-probe-") as tmp:
        probe = Path(tmp) / "marks.jsonl"
        env = {**os.environ, "TC_PROBE_FILE": str(probe),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
        if fresh_caches:
            env.update(TORCHINDUCTOR_CACHE_DIR=f"{tmp}/inductor", TRITON_CACHE_DIR=f"{tmp}/triton")
        launched = time.time()
        with open(log, "w") as f:
            rc = subprocess.call([sys.executable, "-m", "pytest", "-p", "session_probe", *pytest_args],
                                 stdout=f, stderr=subprocess.STDOUT, env=env)
        exited = time.time()
        marks = [json.loads(line) for line in probe.read_text().splitlines()] if probe.exists() else []
    text = log.read_text()
    clock = re.findall(r" in ([\d.]+)s", text)
    summary = text.strip().splitlines()[-1] if text.strip() else ""
    if not any(m["point"] == "test_finish" for m in marks):
        raise SystemExit(f"pytest ran no test (rc={rc}); see {log}: {summary}")
    result = phases(marks, launched, exited)
    result["pytest's clock"] = float(clock[-1]) if clock else None
    return result, f"rc={rc} {summary}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--fresh-caches", action="store_true", help="empty Inductor and Triton caches for every run")
    parser.add_argument("--out", default=None, help="logs and phases.json go here (default: a temp dir)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    out = Path(args.out or tempfile.mkdtemp(prefix="tc-session-phases-"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i in range(1, args.runs + 1):
        args_i = [a.replace("{run}", str(i)) for a in pytest_args]
        result, verdict = run_once(args_i, out / f"run{i}.log", args.fresh_caches)
        results.append(result)
        print(f"run {i}: {verdict}")
    (out / "phases.json").write_text(json.dumps({"pytest_args": pytest_args, "runs": results}, indent=2))
    names = list(results[0])
    print(f"\n{'phase':38}" + "".join(f"{'run ' + str(i + 1):>9}" for i in range(len(results))))
    for name in names:
        cells = "".join(f"{r[name]:>8.1f}s" if r.get(name) is not None else f"{'-':>9}" for r in results)
        print(f"{name:38}{cells}")
    shares = "".join(f"{r['outside the tests'] / r['wall']:>9.0%}" for r in results)
    print(f"{'share of the wall outside the tests':38}{shares}")
    print(f"(logs and phases.json: {out})")


if __name__ == "__main__":
    main()
