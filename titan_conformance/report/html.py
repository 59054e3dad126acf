"""report.html: one self-contained page (inline CSS, plots as data: URIs, no scripts, no fetches)."""

from __future__ import annotations

from typing import Any

from titan_conformance.report.headline import overall, property_rows, variant_line, variant_matrix, warning_lines
from titan_conformance.report.verdict import failures, session_verdict


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 12:
        return f"[{', '.join(map(str, value[:12]))}, ... ({len(value)})]"
    return str(value)


def _ledger(report: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    events, hits = [], []
    for variant, run in report["runs"].items():
        events += [dict(e, worker=f"{variant} ({run.get('worker')})") for e in run["compile"].get("events", [])]
        hits += [f"{variant}: {h}" for h in run["compile"].get("limit_hits", [])]
    return events, hits


def render_html(report: dict[str, Any]) -> str:
    import jinja2

    from titan_conformance.report.plots import all_plots

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("titan_conformance.report", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False,
    )
    env.filters["num"] = _num
    ledger, hits = _ledger(report)
    names, matrix = variant_matrix(report)
    return env.get_template("report.html.j2").render(
        report=report, env=report["environment"], overall=overall(report), rows=property_rows(report),
        variant_names=names, matrix=matrix, variant_lines=[variant_line(n, s) for n, s in report.get("variants", {}).items()],
        variant_rows={n: property_rows(report, n) for n in names},
        failures=failures(report), verdict=session_verdict(report), warnings=warning_lines(report),
        plots=all_plots(report), ledger=ledger, limit_hits=hits,
    )
