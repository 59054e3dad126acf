"""The report's plots, drawn with matplotlib (no pyplot, no display) and inlined as base64 PNG.

Each function takes the report document and returns a `Plot`: a data: URI, or no image and a note
that says why (e.g. no CUDA graphs on a CPU run), so the page never shows a blank figure.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Callable

STEP_PHASES = ("generate", "train", "weight_sync")


@dataclass
class Plot:
    key: str
    title: str
    uri: str | None = None
    """data:image/png;base64,... when drawn."""
    note: str = ""
    """Why there is no image, or what to read off it."""


def _plot(
    key: str, title: str, data: Any, missing: str, draw: Callable[[Any], None], xlabel: str, ylabel: str,
    height: float = 3.2, legend_right: bool = False,
) -> Plot:
    """`draw` fills one axes, labelled and with a legend, as a PNG data: URI; without `data`, the
    note `missing` instead."""
    if not data:
        return Plot(key, title, note=missing)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, height), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    draw(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend_right:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    else:
        ax.legend(fontsize=8)
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return Plot(key, title, "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii"))


def _per_run(report: dict[str, Any], pick: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """`pick(run)` of each variant's run that has it (not empty)."""
    return {variant: value for variant, run in report["runs"].items() if (value := pick(run))}


def _numbers(values: list[Any]) -> list[float]:
    """Non-numbers (e.g. "nan" written for NaN) as NaN, so matplotlib leaves a gap."""
    return [float(v) if isinstance(v, (int, float)) else float("nan") for v in values]


def logprob_histogram(report: dict[str, Any]) -> Plot:
    runs = _per_run(report, lambda r: r.get("logprob_diff"))
    tol = next(iter(runs.values()), {}).get("tolerance_max_abs")
    bound = max((abs(d["histogram"]["edges"][0]) for d in runs.values()), default=0.0)

    def draw(ax):
        for worker, d in runs.items():
            h = d["histogram"]
            ax.stairs(h["counts"], h["edges"], label=f"{worker} ({h['exact_zeros']} exactly 0)")
        if tol and tol <= bound:
            for x in (-tol, tol):
                ax.axvline(x, color="red", linestyle="--", linewidth=1)
        ax.set_yscale("symlog", linthresh=1)

    plot = _plot("logprob_histogram", "Trainer - generator logprob difference (every sampled token)", runs,
                 "No GRPO step completed, so no logprob differences were measured.", draw,
                 "trainer - generator logprob", "tokens")
    if plot.uri and tol:
        plot.note = (f"Red dashed lines: the profile's max_abs tolerance ({tol:.1e})." if tol <= bound else
                     f"Every difference is within the profile's max_abs tolerance ({tol:.1e}), outside this axis.")
    left_out = {w: d["histogram"].get("non_finite", 0) for w, d in runs.items()}
    if any(left_out.values()):
        plot.note += " Left out, not finite (NaN or inf): " + ", ".join(f"{w} {n}" for w, n in left_out.items() if n) + "."
    return plot


def logprob_per_position(report: dict[str, Any]) -> Plot:
    runs = _per_run(report, lambda r: (r.get("logprob_diff") or {}).get("per_position"))

    def draw(ax):
        for worker, p in runs.items():
            x = range(len(p["mean_abs"]))
            ax.plot(x, _numbers(p["mean_abs"]), marker=".", label=f"{worker} mean |diff|")
            ax.plot(x, _numbers(p["max_abs"]), linestyle="--", label=f"{worker} max |diff|")

    return _plot("logprob_per_position", "Logprob difference by position in the completion", runs,
                 "The system under test does not report token positions with its logprob differences.", draw,
                 "position in completion (0 = first generated token)", "|trainer - generator|")


def capture_size_diffs(report: dict[str, Any]) -> Plot:
    per_size = next((c["metrics"]["per_size"] for t in report["tests"] for c in t["checks"]
                     if c["name"] == "cudagraph_equivalence" and c["metrics"].get("per_size")), {})
    sizes = list(per_size)

    def draw(ax):
        width = 0.4
        for i, name in enumerate(("graph_vs_eager_max_abs", "graph_vs_compiled_max_abs")):
            values = _numbers([per_size[s].get(name) for s in sizes])
            ax.bar([j + (i - 0.5) * width for j in range(len(sizes))], values, width, label=name)
        ax.set_xticks(range(len(sizes)), sizes, rotation=30, fontsize=8)

    return _plot("capture_size_diffs", "CUDA-graph replay difference per capture size", per_size,
                 f"No CUDA-graph equivalence measured on this run (device {report['environment'].get('device')}).",
                 draw, "batch size (capture size, or padded up to one)", "max |diff| of logprobs")


def startup_phases(report: dict[str, Any]) -> Plot:
    runs = _per_run(report, lambda r: r["startup"])
    phases = list(dict.fromkeys(p for s in runs.values() for p in s))

    def draw(ax):
        workers = list(runs)
        left = [0.0] * len(workers)
        for phase in phases:
            widths = [float(runs[w].get(phase, 0.0)) for w in workers]
            ax.barh(workers, widths, left=left, label=phase)
            left = [a + b for a, b in zip(left, widths)]

    return _plot("startup_phases", "Startup by phase", runs, "No variant's system was built, so no startup was timed.",
                 draw, "seconds", "variant", height=1.4 + 0.5 * len(runs), legend_right=True)


def step_times(report: dict[str, Any]) -> Plot:
    runs = _per_run(report, lambda r: r["steps"])

    def draw(ax):
        from matplotlib.ticker import MaxNLocator

        for worker, steps in runs.items():
            x = [s["step"] for s in steps]
            line, = ax.plot(x, _numbers([s["seconds"] for s in steps]), marker="o", label=f"{worker} total")
            for phase, style in zip(STEP_PHASES, (":", "--", "-.")):
                ax.plot(x, _numbers([s["times"].get(phase) for s in steps]), linestyle=style,
                        color=line.get_color(), alpha=0.6, label=f"{worker} {phase}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)

    return _plot("step_times", "GRPO step time by phase", runs, "No GRPO step completed.", draw,
                 "step", "seconds", legend_right=True)


PLOTS = (logprob_histogram, logprob_per_position, capture_size_diffs, startup_phases, step_times)


def all_plots(report: dict[str, Any]) -> list[Plot]:
    return [make(report) for make in PLOTS]
