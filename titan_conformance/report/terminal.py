"""The short table at the end of a pytest run: one line per property, then where the report is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from titan_conformance.report.headline import overall, property_rows, variant_line, variant_names, warning_lines
from titan_conformance.report.verdict import session_verdict


def summary_lines(report: dict[str, Any], written: Path | None, write_error: str | None,
                  late_signals: list[str] = ()) -> list[tuple[str, dict]]:
    """(text, markup) lines, markup as TerminalWriter keywords (green=True, ...)."""
    colour = {"pass": {"green": True}, "fail": {"red": True, "bold": True}, "skip": {"yellow": True}}
    names = variant_names(report)
    several = len(names) > 1
    verdict = session_verdict(report)
    headline = f"{verdict.status.upper()} ({overall(report)})" + (f": {verdict.reason}" if verdict.reason else "")
    lines: list[tuple[str, dict]] = [(headline[:300], {"green": True, "bold": True} if verdict.green else colour["fail"])]
    for name in names if several else [None]:
        rows = property_rows(report, name)
        if several:
            state = (report.get("variants") or {}).get(name, {})
            lines.append((f"variant {variant_line(name, state)}"[:160], {"bold": True}))
            if state.get("status") != "ran":
                continue
        width = max(len(r.title) for r in rows)
        indent = "  " if several else ""
        lines += [(f"{indent}{r.title:<{width}}  {r.verdict.upper():<7}  {r.tests:<22}  {r.numbers[:90]}",
                   colour.get(r.verdict, {})) for r in rows]
    for worker, state in report["workers"].items():
        if state["status"] != "finished":
            lines.append((f"worker {worker} {state['status']}: {state.get('error') or ''}".rstrip(": "), {"red": True}))
    if report["partial"]:
        lines.append((f"partial report: {report['partial_reason']}", {"yellow": True}))
    lines += [(line[:300], {"yellow": True}) for line in warning_lines(report)]
    if report.get("disagreements"):
        lines.append((f"{len(report['disagreements'])} test(s) reported passed or skipped by pytest recorded a failed "
                      "check: counted as failed (see the report)", {"red": True, "bold": True}))
    if late_signals:
        lines.append((f"{', '.join(late_signals)} arrived while the final report was written; it was written whole", {}))
    if write_error:
        lines.append((f"report not written: {write_error}", {"red": True, "bold": True}))
    elif written is not None:
        lines.append((f"report: {written}/ (report.json, summary.md, report.html, junit.xml)", {}))
    return lines


def terminal_summary(reporter: Any, report: dict[str, Any], written: Path | None, write_error: str | None,
                     late_signals: list[str] = ()) -> None:
    reporter.write_sep("=", "titan_conformance report")
    for text, markup in summary_lines(report, written, write_error, late_signals):
        reporter.write_line(text, **markup)
