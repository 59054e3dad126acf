"""The session's one verdict, shared by report.json, summary.md, report.html, the terminal and JUnit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


UNFINISHED = "did not finish: "
"""How the message of a test the run stopped under begins (an error, but no verdict of the system)."""


def failures(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in report["tests"] if t["outcome"] in ("failed", "error")]


SESSION_MARK = {"passed": "✅", "failed": "❌", "incomplete": "⚠️", "nothing judged": "⚠️", "in progress": "⏳"}
"""Only `passed` is green: a run that judged nothing, or did not finish, is no evidence."""


@dataclass(frozen=True)
class SessionVerdict:
    status: str
    """passed, failed, incomplete (interrupted, timed out, tests left unfinished), nothing judged
    (every test skipped or none selected) or in progress (the placeholder written at the start)."""
    reason: str
    """Why, when not passed ('' otherwise)."""

    @property
    def green(self) -> bool:
        return self.status == "passed"

    @property
    def headline(self) -> str:
        """e.g. "⚠️ incomplete", for the first line of every report file."""
        return f"{SESSION_MARK[self.status]} {self.status}"


def session_verdict(report: dict[str, Any]) -> SessionVerdict:
    """The session's one verdict, from the recorded results (old reports without a stored verdict
    get the same answer): a failed check fails it; otherwise it is green only when the run
    finished and at least one test judged something (passed rather than skipped)."""
    if report.get("in_progress"):
        return SessionVerdict("in progress", "the run has not finished: this placeholder is not a verdict")
    if failed := [t for t in failures(report) if not t["message"].startswith(UNFINISHED)]:
        return SessionVerdict("failed", f"{len(failed)} check(s) failed")
    if report.get("partial"):
        return SessionVerdict("incomplete", report.get("partial_reason") or "the run did not finish")
    if not any(t["outcome"] == "passed" for t in report["tests"]):
        skipped = [t for t in report["tests"] if t["outcome"] == "skipped"]
        why = (f"all {len(skipped)} tests skipped (first: {skipped[0]['message'] or 'no reason given'})" if skipped
               else "no test was selected")
        return SessionVerdict("nothing judged", f"no check judged the system: {why}")
    return SessionVerdict("passed", "")
