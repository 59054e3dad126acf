"""The GRPO run every check reads: pre-validation, the profile's steps, post-validation."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

from titan_conformance.compilation.cache import compile_cache_counters
from titan_conformance.compilation.ledger import CompileEvent
from titan_conformance.provider import ConformanceSystem


@dataclass
class ConformanceRun:
    system: ConformanceSystem
    records: list = field(default_factory=list)
    """StepRecord of every completed step."""
    pre: object | None = None
    """Validation reward before the first step."""
    post: object | None = None
    """Validation reward after the last step."""
    compile_events: list[CompileEvent] = field(default_factory=list)
    """The compile ledger as it stood at the end of the run (checks may compile more later)."""
    limit_hits: list[str] = field(default_factory=list)
    error: str | None = None
    """What stopped the run early, e.g. a recompile-limit failure under fullgraph."""
    compile_cache: dict[str, int | str] = field(default_factory=dict)
    """Inductor cache hits and misses in this process by the run's end (were its compile times
    cold?), and the bytes of a `--tc-compile-cache` file restored and saved."""


def perform_run(system: ConformanceSystem, steps: int, progress: Callable[[str], None] = lambda _: None) -> ConformanceRun:
    run = ConformanceRun(system)
    try:
        if "grpo" in system.capabilities:
            run.pre = system.validate()
            for i in range(steps):
                run.records.append(system.step())
                progress(f"step {i + 1}/{steps}: {run.records[-1].line()}")
            run.post = system.validate()
    except Exception as e:  # the checks report it (a recompile-limit failure is a verdict, not a crash)
        run.error = f"{type(e).__name__}: {e}".splitlines()[0]
    run.compile_cache = compile_cache_counters()
    if "compile_ledger" in system.capabilities:
        ledger = system.compile_ledger()
        run.compile_events = copy.deepcopy(ledger.events)
        run.limit_hits = list(ledger.limit_hits)
    return run
