"""GRPO learning: validation reward after the run's steps is above the start."""

from __future__ import annotations

from titan_conformance.checks.result import CheckResult


def check_learning(run, profile) -> CheckResult | str:
    if not profile.run.expect_learning:
        return f"profile {profile.name!r} sets run.expect_learning = false (e.g. random weights)"
    if run.pre is None or run.post is None:
        return CheckResult("learning", False, f"the GRPO run did not finish: {run.error}")
    metrics = {"pre": run.pre.total, "post": run.post.total, "delta": run.post.total - run.pre.total,
               "steps": len(run.records)}
    if run.post.total > run.pre.total:
        return CheckResult("learning", True, f"validation reward rose {run.pre.total:+.3f} -> {run.post.total:+.3f}", metrics)
    return CheckResult(
        "learning", False,
        f"GRPO did not learn: validation reward {run.pre.total:+.3f} before and {run.post.total:+.3f} after "
        f"{len(run.records)} steps. Either the update does not reach the policy (optimizer, loss sign, "
        "advantages) or the generator samples from stale weights.",
        metrics,
    )
