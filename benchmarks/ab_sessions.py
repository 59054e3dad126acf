"""One suite session, two versions of the package, measured alternately on one machine.

    python benchmarks/ab_sessions.py --old DIR [--runs N] [--compile-cache FILE] -- <pytest arguments>

DIR holds the other version's `titan_conformance` package (e.g. `git archive <rev> titan_conformance
| tar -x -C DIR`), put first on PYTHONPATH for the "old" arm; the "new" arm is the package as
installed. Runs alternate old, new, old, new... (N each) so that drift of the machine falls on both,
every run with fresh Inductor and Triton dirs (`session_phases.py --fresh-caches`). With
--compile-cache, every run restores its own copy of FILE and of its variants' files beside it, so
all runs start from the same cache. Prints each run's phases, then per phase the median of each arm
and new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from session_phases import run_once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="a folder holding the old titan_conformance package")
    parser.add_argument("--runs", type=int, default=2, help="runs per arm")
    parser.add_argument("--compile-cache", default=None, help="a --tc-compile-cache file every run restores a copy of")
    parser.add_argument("--out", default=None, help="logs and ab.json go here (default: a temp dir)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    old = Path(args.old).resolve()
    if not (old / "titan_conformance" / "__init__.py").exists():
        raise SystemExit(f"--old {old} holds no titan_conformance package")
    out = Path(args.out or tempfile.mkdtemp(prefix="tc-ab-"))
    out.mkdir(parents=True, exist_ok=True)
    seed = Path(args.compile_cache) if args.compile_cache else None
    results: dict[str, list[dict]] = {"old": [], "new": []}
    saved_path = os.environ.get("PYTHONPATH")
    try:
        for i in range(1, args.runs + 1):
            for arm in ("old", "new"):
                first = [str(old)] if arm == "old" else []
                os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [*first, saved_path]))
                with tempfile.TemporaryDirectory(prefix="tc-ab-cache-") as caches:
                    run_args = list(pytest_args)
                    if seed is not None:
                        for f in seed.parent.glob(seed.name + "*"):
                            shutil.copy(f, caches)
                        run_args += ["--tc-compile-cache", str(Path(caches) / seed.name)]
                    result, verdict = run_once(run_args, out / f"{arm}{i}.log", fresh_caches=True)
                results[arm].append(result)
                print(f"{arm} run {i}: wall {result['wall']:.1f}s {verdict}", flush=True)
    finally:
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path
    (out / "ab.json").write_text(json.dumps({"pytest_args": pytest_args, "old": str(old), **results}, indent=2))
    print(f"\n{'phase (median of ' + str(args.runs) + ' runs)':38}{'old':>9}{'new':>9}{'new/old':>9}")
    for name in results["old"][0]:
        cells = [[r[name] for r in results[arm] if r.get(name) is not None] for arm in ("old", "new")]
        if not all(cells):
            continue
        o, n = (statistics.median(c) for c in cells)
        print(f"{name:38}{o:>8.1f}s{n:>8.1f}s{n / o if o else float('nan'):>9.2f}")
    print(f"(logs and ab.json: {out})")


if __name__ == "__main__":
    main()
