"""The report's plots, drawn as SVG (`svg_chart.py`) and inlined as data: URIs.

Each function takes the report document and returns a `Plot`: a data: URI, or no image and a note
that says why (e.g. no CUDA graphs on a CPU run), so the page never shows a blank figure.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Callable

from titan_conformance.report.localization import localized_checks, stages
from titan_conformance.report.svg_chart import Chart, Scale

STEP_PHASES = ("generate", "train", "weight_sync")


@dataclass
class Plot:
    key: str
    title: str
    uri: str | None = None
    """data:image/svg+xml;base64,... when drawn."""
    note: str = ""
    """Why there is no image, or what to read off it."""


def _plot(key: str, title: str, data: Any, missing: str, chart: Chart, draw: Callable[[Chart], None]) -> Plot:
    """`draw` fills `chart` as an SVG data: URI; without `data`, the note `missing` instead."""
    if not data:
        return Plot(key, title, note=missing)
    draw(chart)
    return Plot(key, title, "data:image/svg+xml;base64," + base64.b64encode(chart.svg().encode()).decode("ascii"))


def _per_run(report: dict[str, Any], pick: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """`pick(run)` of each variant's run that has it (not empty)."""
    return {variant: value for variant, run in report["runs"].items() if (value := pick(run))}


def _numbers(values: list[Any]) -> list[float]:
    """Non-numbers (e.g. "nan" written for NaN) as NaN, so the line leaves a gap."""
    return [float(v) if isinstance(v, (int, float)) else float("nan") for v in values]


def logprob_histogram(report: dict[str, Any]) -> Plot:
    runs = _per_run(report, lambda r: r.get("logprob_diff"))
    tol = next(iter(runs.values()), {}).get("tolerance_max_abs")
    bound = max((abs(d["histogram"]["edges"][0]) for d in runs.values()), default=0.0)

    def draw(chart: Chart) -> None:
        for worker, d in runs.items():
            h = d["histogram"]
            chart.stairs(h["counts"], h["edges"], label=f"{worker} ({h['exact_zeros']} exactly 0)")
        if tol and tol <= bound:
            for x in (-tol, tol):
                chart.vline(x)

    plot = _plot("logprob_histogram", "Trainer - generator logprob difference (every sampled token)", runs,
                 "No GRPO step completed, so no logprob differences were measured.",
                 Chart("trainer - generator logprob", "tokens", y=Scale("symlog")), draw)
    if plot.uri and tol:
        plot.note = (f"Red dashed lines: the profile's max_abs tolerance ({tol:.1e})." if tol <= bound else
                     f"Every difference is within the profile's max_abs tolerance ({tol:.1e}), outside this axis.")
    left_out = {w: d["histogram"].get("non_finite", 0) for w, d in runs.items()}
    if any(left_out.values()):
        plot.note += " Left out, not finite (NaN or inf): " + ", ".join(f"{w} {n}" for w, n in left_out.items() if n) + "."
    return plot


def logprob_per_position(report: dict[str, Any]) -> Plot:
    runs = _per_run(report, lambda r: (r.get("logprob_diff") or {}).get("per_position"))

    def draw(chart: Chart) -> None:
        for worker, p in runs.items():
            x = range(len(p["mean_abs"]))
            chart.line(x, _numbers(p["mean_abs"]), f"{worker} mean |diff|", marker=True)
            chart.line(x, _numbers(p["max_abs"]), f"{worker} max |diff|", style="--")

    return _plot("logprob_per_position", "Logprob difference by position in the completion", runs,
                 "The system under test does not report token positions with its logprob differences.",
                 Chart("position in completion (0 = first generated token)", "|trainer - generator|",
                       x=Scale(integer=True)), draw)


def capture_size_diffs(report: dict[str, Any]) -> Plot:
    per_size = next((c["metrics"]["per_size"] for t in report["tests"] for c in t["checks"]
                     if c["name"] == "cudagraph_equivalence" and c["metrics"].get("per_size")), {})
    sizes = list(per_size)

    def draw(chart: Chart) -> None:
        width = 0.4
        for i, name in enumerate(("graph_vs_eager_max_abs", "graph_vs_compiled_max_abs")):
            values = _numbers([per_size[s].get(name) for s in sizes])
            left = [j + (i - 1) * width for j in range(len(sizes))]
            chart.rects([(x, x + width, 0.0, v) for x, v in zip(left, values)], name)

    return _plot("capture_size_diffs", "CUDA-graph replay difference per capture size", per_size,
                 f"No CUDA-graph equivalence measured on this run (device {report['environment'].get('device')}).",
                 Chart("batch size (capture size, or padded up to one)", "max |diff| of logprobs",
                       xticks=[str(s) for s in sizes], y=Scale(lo_fixed=0.0)), draw)


def startup_phases(report: dict[str, Any]) -> Plot:
    runs = _per_run(report, lambda r: r["startup"])
    phases = list(dict.fromkeys(p for s in runs.values() for p in s))
    workers = list(runs)

    def draw(chart: Chart) -> None:
        left = [0.0] * len(workers)
        for phase in phases:
            widths = [float(runs[w].get(phase, 0.0)) for w in workers]
            chart.rects([(a, a + w, i - 0.4, i + 0.4) for i, (a, w) in enumerate(zip(left, widths))], phase)
            left = [a + b for a, b in zip(left, widths)]

    return _plot("startup_phases", "Startup by phase", runs, "No variant's system was built, so no startup was timed.",
                 Chart("seconds", "variant", height=int(90 + 40 * len(runs)), legend_right=True, yticks=workers,
                       x=Scale(lo_fixed=0.0)), draw)


def step_times(report: dict[str, Any]) -> Plot:
    runs = _per_run(report, lambda r: r["steps"])

    def draw(chart: Chart) -> None:
        for worker, steps in runs.items():
            x = [s["step"] for s in steps]
            color = chart.line(x, _numbers([s["seconds"] for s in steps]), f"{worker} total", marker=True)
            for phase, style in zip(STEP_PHASES, (":", "--", "-.")):
                chart.line(x, _numbers([s["times"].get(phase) for s in steps]), f"{worker} {phase}", color=color,
                           style=style, opacity=0.6)

    return _plot("step_times", "GRPO step time by phase", runs, "No GRPO step completed.",
                 Chart("step", "seconds", legend_right=True, x=Scale(integer=True), y=Scale(lo_fixed=0.0)), draw)


def localization(report: dict[str, Any]) -> Plot:
    checks = {f"{check} {test[test.find('['):] if '[' in test else ''}".rstrip(): loc
              for test, check, loc in localized_checks(report)}
    per_check = {label: stages(loc) for label, loc in checks.items()}
    names = list(next(iter(per_check.values()), {}))
    factor = max((loc["factor"] for loc in checks.values()), default=0.0)

    def draw(chart: Chart) -> None:
        for label, per_stage in per_check.items():
            chart.line(range(len(per_stage)), _numbers(list(per_stage.values())), label, marker=True)
        chart.line([0, len(names) - 1], [factor, factor], f"diverges past {factor:g}x", color="red", style="--")

    plot = _plot("localization", "Where trainer and generator part: divergence per stage, in multiples of the precision floor",
                 per_check, "No failed parity verdict was localized (every parity check passed, or the system cannot be probed).",
                 Chart("stage of the forward", "mean |trainer - generator| / floor", xticks=names,
                       y=Scale("symlog")), draw)
    if plot.uri:
        plot.note = "; ".join(f"{label}: first divergence at {loc.get('first_label') or 'no point'}" for label, loc in checks.items())
    return plot


PLOTS = (logprob_histogram, logprob_per_position, capture_size_diffs, startup_phases, step_times, localization)


def all_plots(report: dict[str, Any]) -> list[Plot]:
    return [make(report) for make in PLOTS]
