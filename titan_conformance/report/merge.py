"""One report from the test reports of every xdist worker (or of the single process).

The controller feeds `ReportStore` each phase report of each test (with the check records and run
data that came along with it), and each worker going up or down; `to_report` then builds the
report.json document. Nothing here touches pytest, so the merge can be tested on its own.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from titan_conformance.report.collect import environment
from titan_conformance.report.schema import OUTCOMES, SCHEMA, SCHEMA_VERSION
from titan_conformance.report.verdict import UNFINISHED, session_verdict

DISAGREEMENT = "Recorded result and pytest's outcome disagree"

SUITE_NODEID = re.compile(r"(^|/)conformance/test_\w+\.py::")
"""What the nodeid of a suite test looks like, whatever the rootdir (also in xdist's report of a
test whose worker crashed, which carries nothing else)."""

PROPERTIES = {
    "logprob_parity": "Logprob parity",
    "recompile_budget": "Recompile budget",
    "cudagraphs": "CUDA-graph equivalence",
    "budgets": "Budgets",
    "other": "Other checks",
}
"""The four properties of the headline, then everything else."""

_MODULE_PROPERTY = {
    "test_logprob_parity": "logprob_parity",
    "test_invariance": "logprob_parity",
    "test_determinism": "logprob_parity",
    "test_recompile_budget": "recompile_budget",
    "test_cudagraphs": "cudagraphs",
    "test_budgets": "budgets",
}


_CHECK_PROPERTY = {
    "logprob_parity": "logprob_parity",
    "weight_sync": "logprob_parity",
    "batch_invariance": "logprob_parity",
    "prefill_decode": "logprob_parity",
    "generator_repeat": "logprob_parity",
    "generator_neighbours": "logprob_parity",
    "run_finite": "logprob_parity",
    "precision_floor": "logprob_parity",
    "recompile_budget": "recompile_budget",
    "compile_config": "recompile_budget",
    "compiled_regions_ran": "recompile_budget",
    "capture_sizes": "cudagraphs",
    "capture_policy": "cudagraphs",
    "cudagraph_equivalence": "cudagraphs",
    "graph_replays": "cudagraphs",
    "budgets": "budgets",
    "generate_overhead": "budgets",
}


def property_of(nodeid: str, checks: list[dict[str, Any]] = ()) -> str:
    """The property a test belongs to: by its module (one of the suite's), else by its checks."""
    module = nodeid.split("::")[0].replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".py")
    by_check = (_CHECK_PROPERTY.get(c["name"]) for c in checks)
    return _MODULE_PROPERTY.get(module) or next(filter(None, by_check), "other")


def variant_of(nodeid: str, variants: list[str] | set[str]) -> str | None:
    """The variant among a nodeid's parameter ids, e.g. `fp32` of `test_x[fp32-name]`, or None.
    pytest joins ids with `-`, which variant names may hold too (`bf16-no-graphs`): the longest
    name that spans whole ids wins."""
    name = nodeid[nodeid.rfind("::") + 2:]
    if not name.endswith("]") or "[" not in name:
        return None
    ids = name[name.index("[") + 1:-1].split("-")
    spans = ("-".join(ids[i:j]) for i in range(len(ids)) for j in range(i + 1, len(ids) + 1))
    return max((s for s in spans if s in variants), key=len, default=None)


def _outcome(when: str, outcome: str) -> str:
    """junit-style: a failing setup or teardown is an error; a skip is a skip in any phase."""
    if outcome == "failed" and when in ("setup", "teardown"):
        return "error"
    return outcome


@dataclass
class ReportStore:
    """Test records, run data and worker states, as they arrive at the controller."""

    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Variant name -> its run record (with the worker that ran it)."""
    variants: list[str] = field(default_factory=list)
    """The session's variants in the suite's order (known on the controller before any test)."""
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    finished: set[str] = field(default_factory=set)
    """Nodeids whose outcome is known: the call phase reported, or setup did not pass."""
    leftovers: list[dict[str, Any]] = field(default_factory=list)
    """What a variant's system left running after close: {variant, threads, processes}."""
    disagreements: list[str] = field(default_factory=list)
    """Nodeids whose recorded check failed while pytest reported them passed or skipped."""

    def _order(self, variant: str) -> tuple[int, str]:
        return (self.variants.index(variant) if variant in self.variants else len(self.variants), variant)

    @property
    def active(self) -> bool:
        """True when any conformance test reported (so that other pytest sessions write nothing)."""
        return bool(self.tests or self.runs)

    def worker_up(self, worker: str) -> None:
        self.workers.setdefault(worker, {"status": "running", "error": None})

    def worker_down(self, worker: str, error: str | None) -> None:
        """A worker finished; with `error`, it crashed (its unfinished test is reported failed)."""
        self.workers[worker] = {"status": "crashed" if error else "finished", "error": error}

    def add_phase(
        self, nodeid: str, when: str, outcome: str, duration: float, worker: str, message: str,
        checks: list[dict[str, Any]] = (), run: dict[str, Any] | None = None, variant: str | None = None,
    ) -> None:
        """One phase report (setup, call or teardown) of one test; `variant`: the test's own
        parametrization, else read from the nodeid's parameter ids (as the scheduler groups them;
        a crashed worker's report carries nothing else)."""
        self.worker_up(worker)
        variant = variant or variant_of(nodeid, self.variants) or "base"
        test = self.tests.setdefault(nodeid, {
            "nodeid": nodeid, "variant": variant, "property": property_of(nodeid),
            "outcome": "passed", "duration_s": 0.0, "worker": worker, "message": "", "checks": [],
        })
        test["duration_s"] += float(duration)
        test["checks"] += list(checks)
        test["property"] = property_of(nodeid, test["checks"])
        if run is not None:
            self.runs[run.get("variant") or test["variant"]] = {**run, "worker": worker}
        result = _outcome(when, outcome)
        if result in ("passed", "skipped") and (failed := [c["name"] for c in checks if c.get("passed") is False]):
            # The check's own record says it failed: whatever turned that into a pass or a skip in
            # the process (a patched pytest.fail, a plugin rewriting outcomes), the verdict is a failure.
            result = "failed"
            message = (f"{DISAGREEMENT}: check {', '.join(failed)} recorded a failure, but pytest reported the test "
                       f"{outcome}. Something in this process changed the test's outcome (a plugin, the system under "
                       f"test patching pytest, a hook): the recorded result decides. {message}").strip()
            self.disagreements.append(nodeid)
        if when == "call" or result != "passed":
            self.finished.add(nodeid)
        # The first phase that does not pass decides (a teardown error after a failure stays a failure).
        if result != "passed" and test["outcome"] == "passed":
            test["outcome"], test["message"] = result, message

    def variant_table(self, tests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Variant -> whether it ran (and on which worker), failed to build, or skipped (and why)."""
        names = list(dict.fromkeys([*self.variants, *(t["variant"] for t in tests), *self.runs]))
        table = {}
        for name in names:
            run, mine = self.runs.get(name), [t for t in tests if t["variant"] == name]
            if run is not None:
                failed = str(run.get("error") or "").startswith("build failed")
                status, reason = ("build failed", run["error"]) if failed else ("ran", run.get("error"))
            elif mine and all(t["outcome"] == "skipped" for t in mine):
                status, reason = "skipped", mine[0]["message"]
            else:
                status, reason = "not run", None
            table[name] = {"status": status, "worker": (run or {}).get("worker") or next((t["worker"] for t in mine), None),
                           "profile": (run or {}).get("profile"), "reason": reason}
        return table

    def to_report(
        self, exitstatus: int, collected: int, interrupted: bool, options: dict[str, Any], in_progress: bool = False,
        stopped: str | None = None, phases: dict[str, dict] | None = None,
    ) -> dict[str, Any]:
        """The report.json document as it stands. `in_progress`: written at the session's start, in
        place of whatever the folder held; `stopped`: why and where the run stopped early;
        `phases`: worker -> the phase it was in last."""
        tests = sorted(self.tests.values(), key=lambda t: t["nodeid"])
        for test in tests:
            if test["nodeid"] not in self.finished:  # set up, then the run stopped under it
                test["outcome"] = "error"
                test["message"] = UNFINISHED + ("the run was interrupted" if interrupted else "no outcome reported")
        workers = {w: dict(s) for w, s in sorted(self.workers.items())}
        for state in workers.values():
            if state["status"] == "running":
                state["status"] = "interrupted" if interrupted else "finished"
        reasons = []
        if in_progress:
            reasons.append(
                f"the run started at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))} and has not "
                "finished; a run stopped without the chance to write its report leaves this one"
            )
        if interrupted:
            reasons.append(stopped or "the run was interrupted")
        if len(self.finished) < collected:
            reasons.append(f"{collected - len(self.finished)} of {collected} collected tests did not finish")
        summary = {o: sum(t["outcome"] == o for t in tests) for o in OUTCOMES}
        summary["collected"] = max(collected, len(tests))
        report = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "duration_s": time.time() - self.started,
            "partial": bool(reasons),
            "partial_reason": "; ".join(reasons) or None,
            "in_progress": in_progress,
            "phases": dict(phases or {}),
            "exitstatus": int(exitstatus),
            "environment": environment(options, self.runs),
            "workers": workers,
            "summary": summary,
            "variants": self.variant_table(tests),
            "tests": tests,
            "runs": {name: self.runs[name] for name in sorted(self.runs, key=self._order)},
            "disagreements": list(self.disagreements),
            "leftovers": list(self.leftovers),
        }
        verdict = session_verdict(report)
        report["verdict"] = {"status": verdict.status, "reason": verdict.reason}
        return report
