"""`titan-conformance budgets REPORT.json`: a profile's `[budgets.<device class>]` table from what a
conformance run measured, with a stated margin.

Budgets belong to a device class (the GPU's model), so a team with a new runner type measures once
and pastes the table into its profile. Each budget is the margin times its variant's measured value,
rounded up to two significant digits: a margin of 2 catches a recompile storm, a lost CUDA graph or
a cache that stopped working, and rides out runner-to-runner spread.

Only a passing, complete run's finite times are a measure of the system: a report whose checks
failed, or that is partial, is refused unless asked for (and the output then says so), and a time
that is not finite is refused always.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from titan_conformance.checks.budgets import compile_warmth, measured, proposed_budget
from titan_conformance.device_class import recorded_class
from titan_conformance.errors import ConformanceError
from titan_conformance.profile import Budget
from titan_conformance.report.compare import partial_note, printable
from titan_conformance.report.schema import field, malformed, number, what

BUDGET_KEYS = [f.name for f in dataclasses.fields(Budget)]
LONGEST = 1e9
"""Seconds (about 31 years): a longer time is a broken timer, and margin x it could overflow."""
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
"""A TOML key that needs no quotes."""


def propose_tables(
    report: dict[str, Any], margin: float, source: str, allow_failed: bool = False, allow_partial: bool = False,
) -> str:
    """TOML text: one commented `[budgets.<class>]` table per device class the report's runs used.
    Runs that failed are left out: their times are of a run that did not finish. A partial report,
    or one whose checks failed, is refused unless allowed, and the text then opens with a warning."""
    if not (math.isfinite(margin) and 1 <= margin <= 100):
        raise ConformanceError(
            f"--margin {margin:g} is out of range: use a margin from 1 (the run's own times) to 100; 2 is usual."
        )
    warnings = _refusals(report, source, allow_failed, allow_partial)
    by_class: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, float]]]] = {}
    failed = shared = 0
    for variant, run in report.get("runs", {}).items():
        if run.get("error") or run.get("gpu_shared"):  # times of a run that stopped, or shared a GPU
            failed += bool(run.get("error"))
            shared += not run.get("error")
            continue
        values = measured(*_times(run, variant, source))
        if values.get("startup") or values.get("step"):
            cls = recorded_class(run.get("device_class"), (run.get("versions") or {}).get("gpu")) or "cpu"
            by_class.setdefault((variant, cls), []).append((run, values))
    if not by_class:
        runs = len(report.get("runs", {}))
        what_ran = f"{runs} run(s), {failed} failed, {shared} on a GPU shared with other workers" if runs else \
            "no check of it built a system"
        raise ConformanceError(
            f"{source} has no completed run with startup or step times ({what_ran}); propose budgets from "
            "the report of a suite run that built the system and completed its steps."
        )
    return "".join(f"# WARNING: {printable(w)}\n" for w in warnings) + "\n".join(
        _table(variant, cls, runs, margin, source, report.get("created", ""), failed)
        for (variant, cls), runs in by_class.items()
    )


def _refusals(report: dict[str, Any], source: str, allow_failed: bool, allow_partial: bool) -> list[str]:
    """Why the report's times are no measure of the system (a partial run, failed checks): an error,
    or with the matching --allow flag the warnings to print above the tables."""
    warnings = []
    if note := partial_note(report, source):
        if not allow_partial:
            raise ConformanceError(
                f"{note}: its times are of a run that stopped early. Propose budgets from a complete run's "
                "report, or pass --allow-partial to propose from the runs it completed (the output then says so)."
            )
        warnings.append(f"proposed with --allow-partial: {note}.")
    if failed := _failed_tests(report):
        shown = ", ".join(repr(t) for t in failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        if not allow_failed:
            raise ConformanceError(
                f"{source} records {len(failed)} failed test(s) ({shown}): a run that failed its checks (NaN "
                "logprobs, a recompile storm, a crash) is no measure of the system's speed, and budgets from it "
                "would pass the next such run. Fix the failure and propose budgets from a passing run, or pass "
                "--allow-failed to propose from this one anyway (the output then says so)."
            )
        warnings.append(f"proposed with --allow-failed from a run whose checks failed: {len(failed)} test(s) ({shown}).")
    return warnings


def _failed_tests(report: dict[str, Any]) -> list[str]:
    """Node ids of the tests that failed, by their outcome or by a recorded check that did not pass
    (the check's record counts even where pytest's outcome disagrees)."""
    return [t["nodeid"] for t in report["tests"]
            if t["outcome"] in ("failed", "error") or not all(c["passed"] for c in t["checks"])]


def _times(run: dict[str, Any], variant: str, source: str) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(startup phases, each step's phase times) of one run, each checked to be a finite time."""
    where = f"runs[{variant!r}]"
    startup = {p: _seconds(v, source, field(f"{where}.startup", p)) for p, v in run["startup"].items()}
    steps = [{p: _seconds(v, source, field(f"{where}.steps[{i}].times", p)) for p, v in step["times"].items()}
             for i, step in enumerate(run["steps"])]
    return startup, steps


def _seconds(value: Any, source: str, where: str) -> float:
    """The time at `where`, refused unless a finite number of seconds a budget can be a margin of."""
    seconds = number(value, source, where)
    if not 0 <= seconds <= LONGEST:  # also false for nan
        raise ConformanceError(
            f"{source}: {where} is {seconds:g}, not a time a budget can come from (a finite number of seconds from "
            f"0 to {LONGEST:g}): a broken timer, or a run that went wrong. Budgets are never proposed from such a "
            "time; propose them from a run whose times are all finite."
        )
    return seconds


def toml_key(name: str) -> str:
    """`name` as a TOML key: bare where TOML allows, else a quoted string with `"`, `\\` and every
    unprintable character escaped, so that any name a report holds reads back as itself."""
    if BARE_KEY.fullmatch(name):
        return name
    return '"' + "".join(
        "\\" + c if c in '"\\' else c if c.isprintable() else f"\\U{ord(c):08X}" for c in name
    ) + '"'


def _warmth(run: dict[str, Any], variant: str, source: str) -> str:
    """compile_warmth of a run, its FX-graph cache counters checked to be counts."""
    cache = run["compile"].get("cache") or {}
    counters = {k: v for k, v in cache.items() if k.startswith("fxgraph_")}
    for key, value in counters.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise malformed(source, [f"{field(f'runs[{variant!r}].compile.cache', key)} is {what(value)}, not a count"])
    return compile_warmth(counters)


def _table(variant: str, cls: str, runs: list[tuple[dict[str, Any], dict[str, float]]], margin: float,
           source: str, created: str, failed: int) -> str:
    slowest = {k: max(v[k] for _, v in runs if k in v) for k in BUDGET_KEYS if any(k in v for _, v in runs)}
    budget = proposed_budget(slowest, margin)
    versions = runs[0][0].get("versions") or {}
    left_out = f" ({failed} failed run(s) left out)" if failed else ""
    comments = [
        f"Proposed by `titan-conformance budgets` from {source}",
        (f"({versions.get('gpu') or cls}, torch {versions.get('torch') or '?'}, {created[:10] or 'undated'}): "
         f"{margin:g}x its run's times{left_out}, rounded up to two significant digits."),
    ]
    warm = sorted({w for r, _ in runs if "from cache" in (w := _warmth(r, variant, source))})
    if warm:
        comments.append(
            f"The compile phase was partly cached in this run ({', '.join(warm)}): a runner with empty "
            "caches compiles longer, so propose compile and startup from a cold run."
        )
    lines = [f"# {printable(c)}" for c in comments]
    lines.append(f"[budgets.{toml_key(cls)}]" if variant == "base" else
                 f"[variants.{toml_key(variant)}.budgets.{toml_key(cls)}]")
    lines += [f"{key} = {budget[key]!r}  # measured {slowest[key]:.3g} s" for key in budget]
    return "\n".join(lines) + "\n"
