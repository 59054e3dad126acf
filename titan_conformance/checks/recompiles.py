"""Recompile budget: every region's compile count under recompile_limit, and the limit never hit."""

from __future__ import annotations

import re

from titan_conformance.checks.result import CheckResult
from titan_conformance.compilation.ledger import CompileEvent, CompileLedger


def recompile_verdict(
    events: list[CompileEvent], limit_hits: list[str], limit: int, run_error: str | None = None
) -> CheckResult:
    counts: dict[str, int] = {}
    for e in events:
        counts[e.region] = counts.get(e.region, 0) + 1
    table = CompileLedger(events=list(events), limit_hits=list(limit_hits)).format()
    over = {r: n for r, n in counts.items() if n > limit}
    metrics = {"compiles_per_region": counts, "limit_hits": list(limit_hits), "max": max(counts.values(), default=0)}
    limits = {"recompile_limit": limit}
    limit_error = bool(run_error and re.search(r"recompile.?limit", run_error, re.IGNORECASE))
    if not over and not limit_hits and not limit_error:
        return CheckResult("recompile_budget", True, f"compiles per region {counts} within recompile_limit={limit}", metrics, limits)
    causes = [f"{r} compiled {n} times > recompile_limit={limit}" for r, n in over.items()]
    causes += [f"{h} (Dynamo fell back to eager, or raised under fullgraph)" for h in limit_hits]
    if run_error:
        causes.append(f"the run failed: {run_error}")
    reasons = sorted({e.reason for e in events if e.index > 0})
    return CheckResult(
        "recompile_budget",
        False,
        "Recompile budget exceeded: " + "; ".join(causes) + ". Guard failures that caused recompiles: "
        + ("; ".join(reasons) or "none recorded") + ". Make the varying input dynamic or stable "
        "(mark it dynamic, keep its type and strides fixed) or raise recompile_limit if the count is "
        "expected.\n" + table,
        metrics,
        limits,
    )


def check_recompile_budget(run, profile) -> CheckResult:
    """Over the whole GRPO run: steps of different lengths, prefill and decode, fwd and bwd."""
    return recompile_verdict(run.compile_events, run.limit_hits, profile.compile.recompile_limit, run.error)
