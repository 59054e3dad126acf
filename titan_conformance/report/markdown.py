"""summary.md: a pull-request comment (< 64 KB): the headline table, then each failure with its cause."""

from __future__ import annotations

from typing import Any

from titan_conformance.report.localization import localized_checks, markdown_lines
from titan_conformance.report.headline import (
    VERDICT_MARK, overall, property_rows, variant_line, variant_matrix, variant_names, warning_lines,
)
from titan_conformance.report.verdict import failures, session_verdict

SUMMARY_LIMIT = 64 * 1024 - 1
"""Bytes; GitHub's comment limit is 65536 characters, and fewer bytes are never more characters."""
MESSAGE_LIMIT = 6000
"""Characters of one failure's message (a recompile ledger can be long; report.json has all of it)."""


def fit_bytes(text: str, limit: int, note: str) -> str:
    """`text` cut at a line boundary to at most `limit` UTF-8 bytes, ending with `note` when cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    tail = f"\n\n{note}\n"
    keep = data[: max(0, limit - len(tail.encode("utf-8")) - 4)].decode("utf-8", errors="ignore")
    keep = keep[: keep.rfind("\n") + 1 if "\n" in keep else len(keep)]
    if keep.count("```") % 2:  # cut inside a code block: close it
        keep += "```"
    return keep + tail


def cell(text: Any) -> str:
    """A table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _message(text: str) -> str:
    if len(text) > MESSAGE_LIMIT:
        text = text[:MESSAGE_LIMIT] + f"\n... ({len(text) - MESSAGE_LIMIT} more characters in report.json)"
    return "```\n" + text.replace("```", "'''") + "\n```"


def _environment(env: dict[str, Any]) -> str:
    backend = env.get("backend") or {}
    rows = [
        ("profile", env.get("profile")), ("device", f"{env.get('device')} ({env.get('device_class')})"),
        ("GPU", env.get("gpu")), ("torch", env.get("torch")), ("CUDA", env.get("cuda")),
        ("driver", env.get("driver")), ("vLLM", env.get("vllm")),
        ("backend", ", ".join(f"{k}={v}" for k, v in backend.items() if v)),
        *((f"sampling ({variant})", spec) for variant, spec in (env.get("sampling") or {}).items()),
        ("titan_conformance", env.get("titan_conformance")),
        *(env.get("system_details") or {}).items(),
    ]
    return "\n".join(f"| {k} | {cell(v if v not in (None, '') else '-')} |" for k, v in rows)


def summary_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    verdict = session_verdict(report)
    lines = [
        f"## titan_conformance: {verdict.headline} ({overall(report)})",
        "",
        f"Profile `{env.get('profile')}` on {env.get('device')}, torch {env.get('torch')}.",
        "",
    ]
    if verdict.status == "nothing judged":
        lines += [f"> **Not a pass**: {cell(verdict.reason)}.", ""]
    if report.get("disagreements"):
        lines += [f"> **Outcome overridden**: {len(report['disagreements'])} test(s) whose recorded check failed were "
                  "reported passed or skipped by pytest in the process; they count as failed.", ""]
    if report["partial"]:
        lines += [f"> **Partial report**: {report['partial_reason']}.", ""]
    names = variant_names(report)
    if len(names) > 1:
        names, matrix = variant_matrix(report)
        lines += ["| Property | " + " | ".join(f"`{n}`" for n in names) + " |", "| --- |" + " --- |" * len(names)]
        lines += [f"| {title} | " + " | ".join(VERDICT_MARK[v] for v in verdicts) + " |" for title, verdicts in matrix]
        lines += [""] + [f"- {cell(variant_line(n, s))}" for n, s in (report.get("variants") or {}).items()]
    for name in names:
        if len(names) > 1:
            lines += ["", f"#### Variant `{name}`", ""]
        lines += ["| Property | Verdict | Tests | Key numbers |", "| --- | --- | --- | --- |"]
        for row in property_rows(report, name if len(names) > 1 else None):
            lines.append(f"| {row.title} | {VERDICT_MARK[row.verdict]} {row.verdict} | {row.tests} | {cell(row.numbers)} |")
    if warnings := warning_lines(report):
        lines += [""] + [f"- ⚠️ {cell(line)}" for line in warnings]
    crashed = {w: s for w, s in report["workers"].items() if s["status"] != "finished"}
    if crashed:
        lines += [""] + [f"- Worker `{w}` {s['status']}" + (f": {cell(s['error'])}" if s.get("error") else "")
                         for w, s in crashed.items()]
    failed = failures(report)
    if failed:
        lines += ["", f"### Failures ({len(failed)})"]
        for t in failed:
            lines += ["", f"**{t['outcome'].upper()}** `{t['nodeid'].split('/')[-1]}` (worker {t['worker']})", "",
                      _message(t["message"] or "(no message)")]
            for _, check, loc in localized_checks({"tests": [t]}):
                lines += ["", *markdown_lines(check, loc)]
    lines += ["", "<details><summary>Environment</summary>", "", "| | |", "| --- | --- |",
              _environment(env), "", "</details>", ""]
    return fit_bytes("\n".join(lines), SUMMARY_LIMIT, "... summary cut to fit a comment; report.json has every failure.")
