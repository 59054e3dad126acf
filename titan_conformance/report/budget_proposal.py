"""`titan-conformance budgets REPORT.json`: a profile's `[budgets.<device class>]` table from what a
conformance run measured, with a stated margin.

Budgets belong to a device class (the GPU's model), so a team with a new runner type measures once
and pastes the table into its profile. Each budget is the margin times its variant's measured value,
rounded up to two significant digits: a margin of 2 catches a recompile storm, a lost CUDA graph or
a cache that stopped working, and rides out runner-to-runner spread.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from titan_conformance.checks.budgets import compile_warmth, measured, proposed_budget
from titan_conformance.device_class import recorded_class
from titan_conformance.errors import ConformanceError
from titan_conformance.profile import Budget

BUDGET_KEYS = [f.name for f in dataclasses.fields(Budget)]


def propose_tables(report: dict[str, Any], margin: float, source: str) -> str:
    """TOML text: one commented `[budgets.<class>]` table per device class the report's runs used.
    Runs that failed are left out: their times are of a run that did not finish."""
    if report.get("partial"):
        raise ConformanceError(
            f"{source} is a partial report ({report.get('partial_reason') or 'the run did not finish'}): its times are "
            "of a run that stopped early. Propose budgets from a complete run's report."
        )
    if not (math.isfinite(margin) and 1 <= margin <= 100):
        raise ConformanceError(
            f"--margin {margin:g} is out of range: use a margin from 1 (the run's own times) to 100; 2 is usual."
        )
    by_class: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, float]]]] = {}
    failed = shared = 0
    for variant, run in report.get("runs", {}).items():
        if run.get("error") or run.get("gpu_shared"):  # times of a run that stopped, or shared a GPU
            failed += bool(run.get("error"))
            shared += not run.get("error")
            continue
        values = measured(*_times(run, variant, source))
        if values.get("startup") or values.get("step"):
            cls = recorded_class(run.get("device_class"), run.get("versions", {}).get("gpu")) or "cpu"
            by_class.setdefault((variant, cls), []).append((run, values))
    if not by_class:
        runs = len(report.get("runs", {}))
        what = f"{runs} run(s), {failed} failed, {shared} on a GPU shared with other workers" if runs else \
            "no check of it built a system"
        raise ConformanceError(
            f"{source} has no completed run with startup or step times ({what}); propose budgets from "
            "the report of a suite run that built the system and completed its steps."
        )
    return "\n".join(
        _table(variant, cls, runs, margin, source, report.get("created", ""), failed)
        for (variant, cls), runs in by_class.items()
    )


def _times(run: dict[str, Any], variant: str, source: str) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(startup phases, each step's phase times) of one run, checked to be numbers."""
    startup, steps = run.get("startup") or {}, run.get("steps") or []
    step_times = [step.get("times") if isinstance(step, dict) else None for step in steps]
    tables = [startup, *step_times]
    if not all(isinstance(t, dict) and all(_is_seconds(v) for v in t.values()) for t in tables):
        raise ConformanceError(
            f"{source} is a malformed report: the startup or step times of run {variant!r} are not all "
            "numbers of seconds. It was edited or written incompletely; use a report.json written by a "
            "conformance run."
        )
    return startup, step_times


def _is_seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _table(variant: str, cls: str, runs: list[tuple[dict[str, Any], dict[str, float]]], margin: float,
           source: str, created: str, failed: int) -> str:
    slowest = {k: max(v[k] for _, v in runs if k in v) for k in BUDGET_KEYS if any(k in v for _, v in runs)}
    budget = proposed_budget(slowest, margin)
    versions = runs[0][0].get("versions", {})
    left_out = f" ({failed} failed run(s) left out)" if failed else ""
    lines = [
        f"# Proposed by `titan-conformance budgets` from {source}",
        f"# ({versions.get('gpu') or cls}, torch {versions.get('torch', '?')}, {created[:10] or 'undated'}): "
        f"{margin:g}x its run's times{left_out}, rounded up to two significant digits.",
    ]
    warm = sorted({w for r, _ in runs if "from cache" in (w := compile_warmth(r.get("compile", {}).get("cache", {})))})
    if warm:
        lines.append(
            f"# The compile phase was partly cached in this run ({', '.join(warm)}): a runner with empty "
            "caches compiles longer, so propose compile and startup from a cold run."
        )
    lines.append(f"[budgets.{cls}]" if variant == "base" else f"[variants.{variant}.budgets.{cls}]")
    lines += [f"{key} = {budget[key]!r}  # measured {slowest[key]:.3g} s" for key in budget]
    return "\n".join(lines) + "\n"
