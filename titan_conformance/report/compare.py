"""Before/after: two reports side by side, with deltas and the regressions beyond a threshold.

Compared: startup by phase, step time by phase (medians over steps), the logprob difference,
compiles per region (and recompile-limit hits), capture sizes and capture time, and every test's
verdict, variant by variant (each variant ran once; step times are medians over its steps).
A number that is not finite (NaN, a broken timer) never passes quietly: in head it is a regression,
in base an unusable baseline, said so in its row and under the table.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from titan_conformance.device_class import recorded_class
from titan_conformance.errors import ConformanceError
from titan_conformance.report.markdown import cell
from titan_conformance.report.schema import field, number

PARITY_METRICS = ("max_abs", "p99_abs", "mean_abs", "k3_kl")
NUMERIC = ("seconds", "diff", "count")
"""Kinds of row whose values are numbers (floats, possibly not finite)."""


@dataclass
class Row:
    section: str
    metric: str
    kind: str
    """seconds, diff (lower is better), count (any increase regresses), sizes or verdict."""
    base: Any
    head: Any
    regression: bool = False
    note: str = ""
    unusable_base: bool = False
    """The base's value is not finite, so head's could not be judged against it."""

    @property
    def delta(self) -> float | None:
        if self.kind in NUMERIC and self.base is not None and self.head is not None:
            delta = self.head - self.base
            return delta if math.isfinite(delta) else None
        return None


def printable(text: Any) -> str:
    """`text` on one line, its control and other unprintable characters escaped: names and values
    in a report come from anywhere, and must neither break a table row nor reach a terminal as
    escape sequences."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def _median(values: list[float]) -> float:
    """The median, or the first value that is not finite: a broken timer is flagged, not outvoted."""
    broken = [v for v in values if not math.isfinite(v)]
    return broken[0] if broken else statistics.median(values)


def _ordered(keys: list[str]) -> list[str]:
    return list(dict.fromkeys(keys))


def _parity(tests: list[dict[str, Any]], run: dict[str, Any], where: str) -> tuple[dict[str, Any], str]:
    """The logprob difference's statistics, from its check or else the run, and where they are."""
    for test in tests:
        for check in test["checks"]:
            if check["name"] == "logprob_parity" and check["metrics"]:
                return check["metrics"], f"the logprob_parity check of {test['nodeid']!r}: metrics"
    return (run.get("logprob_diff") or {}).get("stats") or {}, f"{where}.logprob_diff.stats"


def _extract_variant(
    name: str, run: dict[str, Any], tests: list[dict[str, Any]], section: str, source: str,
) -> dict[tuple[str, str], tuple[str, Any]]:
    """(section, metric) -> (kind, value) of variant `name`'s run and tests; `section` prefixes each
    section name (the variant's, where a report has several). A value that is not a number where
    one belongs is a malformed report, named by its field."""
    out: dict[tuple[str, str], tuple[str, Any]] = {}
    where = f"runs[{name!r}]"
    startup = {p: number(v, source, field(f"{where}.startup", p)) for p, v in (run.get("startup") or {}).items()}
    records = run.get("steps") or []
    steps = [{p: number(v, source, field(f"{where}.steps[{i}].times", p)) for p, v in step["times"].items()}
             for i, step in enumerate(records)]
    totals = [number(step["seconds"], source, f"{where}.steps[{i}].seconds") for i, step in enumerate(records)]
    for phase, seconds in startup.items():
        out[section + "startup", phase] = ("seconds", seconds)
    if startup:
        out[section + "startup", "total"] = ("seconds", sum(startup.values()))
    for phase in _ordered([p for times in steps for p in times]):
        out[section + "step", phase] = ("seconds", _median([times[phase] for times in steps if phase in times]))
    if totals:
        out[section + "step", "total"] = ("seconds", _median(totals))
    parity, parity_where = _parity(tests, run, where)
    for metric in PARITY_METRICS:
        if metric in parity:
            out[section + "logprob diff", metric] = ("diff", number(parity[metric], source, field(parity_where, metric)))
    compiled = run.get("compile") or {}
    for region, count in (compiled.get("counts") or {}).items():
        out[section + "recompiles", region] = ("count", number(count, source, field(f"{where}.compile.counts", region)))
    if run:
        out[section + "recompiles", "limit hits"] = ("count", float(len(compiled.get("limit_hits") or [])))
    if capture := run.get("capture"):
        out[section + "capture", "sizes"] = ("sizes", capture.get("captured") or [])
        if capture.get("seconds") is not None:  # None: the system captured nothing to time
            out[section + "capture", "time"] = ("seconds", number(capture["seconds"], source, f"{where}.capture.seconds"))
    for test in tests:
        out[section + "verdict", test["nodeid"].split("::", 1)[-1]] = ("verdict", test["outcome"])
    return out


def extract(report: dict[str, Any], source: str) -> dict[tuple[str, str], tuple[str, Any]]:
    """(section, metric) -> (kind, value) for one report (read from `source`), variant by variant (a
    variant's sections are prefixed with its name where the report is not of the base variant alone)."""
    names = list(dict.fromkeys([*report.get("variants", {}), *report["runs"], *(t["variant"] for t in report["tests"])]))
    out: dict[tuple[str, str], tuple[str, Any]] = {}
    for name in names:
        prefix = "" if names == ["base"] else f"[{name}] "
        tests = [t for t in report["tests"] if t["variant"] == name]
        out.update(_extract_variant(name, report["runs"].get(name, {}), tests, prefix, source))
    return out


def _judge(row: Row, threshold: float, min_seconds: float) -> None:
    base, head = row.base, row.head
    if row.kind in NUMERIC and head is not None and not math.isfinite(head):
        row.regression, row.note = True, f"REGRESSION: head is {head}"  # a broken timer or NaN hides any slowdown
        return
    if base is None or head is None:
        row.note = "only in head" if base is None else "only in base"
        if row.kind == "verdict" and head in ("failed", "error"):
            row.regression = True
        return
    if row.kind in NUMERIC and not math.isfinite(base):
        row.unusable_base, row.note = True, f"UNUSABLE BASE: base is {base}, head not judged"
        return
    if row.kind == "seconds":
        row.regression = head > base * (1 + threshold) and head - base > min_seconds
    elif row.kind == "diff":
        row.regression = head > base * (1 + threshold) if base > 0 else head > 0
    elif row.kind == "count":
        row.regression = head > base
    elif row.kind == "verdict":
        row.regression = base == "passed" and head in ("failed", "error")
        if base != head and not row.regression:
            row.note = "changed"
    elif row.kind == "sizes" and base != head:
        row.note = "changed"
    if row.regression and not row.note:
        row.note = "REGRESSION"


def _environment(report: dict[str, Any], key: str) -> Any:
    value = report["environment"].get(key)
    return recorded_class(value, report["environment"].get("gpu")) if key == "device_class" else value


def _check_comparable(base: dict[str, Any], head: dict[str, Any], names: tuple[str, str]) -> None:
    for key, what in (("profile", "profile"), ("device_class", "device class")):
        b, h = (_environment(report, key) for report in (base, head))
        if b and h and b != h:
            raise ConformanceError(
                f"Incompatible reports: {names[0]} ran {what} {b!r} and {names[1]} ran {what} {h!r}, so their "
                "times and tolerances are not comparable. Compare two runs of the same profile on the same "
                "device class (the report's environment says which)."
            )


def partial_note(report: dict[str, Any], name: str) -> str | None:
    """Why a report is partial, named, or None for a complete one."""
    if not report.get("partial"):
        return None
    return f"{name} is a partial report ({printable(report.get('partial_reason') or 'the run did not finish')})"


def compare(
    base: dict[str, Any], head: dict[str, Any], threshold: float = 0.1, min_seconds: float = 0.05,
    names: tuple[str, str] = ("BASE", "HEAD"), allow_partial: bool = False,
) -> list[Row]:
    """Rows of the before/after table, regressions flagged. A partial report (a run stopped early)
    is refused unless `allow_partial`: its unfinished checks would show as regressions."""
    if not all(math.isfinite(x) and x >= 0 for x in (threshold, min_seconds)):  # nan would make every comparison false
        raise ConformanceError(f"--threshold ({threshold}) and --min-seconds ({min_seconds}) must be finite numbers >= 0.")
    notes = [n for n in (partial_note(base, names[0]), partial_note(head, names[1])) if n]
    if notes and not allow_partial:
        raise ConformanceError(
            "; ".join(notes) + ". Its checks that did not finish would read as regressions: compare complete runs, "
            "or pass --allow-partial to compare what it has (the table then marks it)."
        )
    _check_comparable(base, head, names)
    before, after = extract(base, names[0]), extract(head, names[1])
    rows = []
    for key in _ordered([*before, *after]):
        kind = (before.get(key) or after.get(key))[0]
        row = Row(key[0], key[1], kind, before.get(key, (kind, None))[1], after.get(key, (kind, None))[1])
        _judge(row, threshold, min_seconds)
        rows.append(row)
    return rows


def _value(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind not in NUMERIC or not math.isfinite(value):
        return str(value)
    return f"{value:.3f}s" if kind == "seconds" else f"{value:.3e}" if kind == "diff" else f"{value:g}"


def _delta(row: Row) -> str:
    d = row.delta
    if d is None:
        return ""
    if d == 0:
        return "="
    if row.kind == "count":
        return f"{d:+g}"
    text = f"{d:+.3f}s" if row.kind == "seconds" else f"{d:+.3e}"
    return text + (f" ({d / row.base:+.1%})" if row.base else "")


def _footer(rows: list[Row]) -> str:
    regressions = sum(r.regression for r in rows)
    footer = f"{regressions} regression(s)" if regressions else "no regressions"
    if unusable := sum(r.unusable_base for r in rows):
        footer += f"; {unusable} row(s) not judged: the base's value is not finite (re-run the base)"
    return footer


def table(rows: list[Row], markdown: bool = False) -> str:
    """The table as aligned text, or as a Markdown table for a pull-request description."""
    header = ("section", "metric", "base", "head", "delta", "")
    cells = [tuple(map(printable, (r.section, r.metric, _value(r.base, r.kind), _value(r.head, r.kind), _delta(r), r.note)))
             for r in rows]
    footer = _footer(rows)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in cells]
        return "\n".join(lines + ["", f"**{footer}**"])
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *cells]]
    return "\n".join(lines + [footer])
