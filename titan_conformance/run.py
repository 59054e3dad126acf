"""The GRPO run every check reads: pre-validation, the profile's steps, post-validation."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

from titan_conformance.compilation.cache import compile_cache_counters
from titan_conformance.compilation.ledger import CompileEvent
from titan_conformance.protocol import ConformanceSystem

AFTER_RUN = "the checks' probes after the run"
"""The ledger's phase once the run is over: what compiles then is not in `ConformanceRun.compile_events`."""


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
    """The compile ledger as it stood at the end of the run, each event stamped with the phase it
    compiled in (startup, a validation, a step, a decode timing probe). The checks' own probes
    after the run are not in it, by construction."""
    limit_hits: list[str] = field(default_factory=list)
    compile_settings: dict[str, dict] = field(default_factory=dict)
    """Each compiled region's effective settings at the end of the run."""
    compiled_calls: dict[str, int] = field(default_factory=dict)
    """Runs of each region's compiled graphs during the GRPO steps (not the validations, nor the
    timing probes between steps)."""
    decode_step_seconds: list[float | None] = field(default_factory=list)
    """Per step: one bare decode step at that step's batch, timed right after it (None where the
    step decoded nothing or the provider cannot time one)."""
    error: str | None = None
    """What stopped the run early, e.g. a recompile-limit failure under fullgraph."""
    compile_cache: dict[str, int | str] = field(default_factory=dict)
    """Inductor cache hits and misses in this process by the run's end (were its compile times
    cold?), and the bytes of a `--tc-compile-cache` file restored and saved."""


def _bare_decode_seconds(system: ConformanceSystem, record) -> float | None:
    """One bare decode step at the step's batch and about its mean sequence length."""
    decode = getattr(record, "decode", None)
    if "decode_timing" not in system.capabilities or decode is None or not decode.decode_steps:
        return None
    return system.time_decode_step(decode.batch, int(record.avg_tokens) + 8)


def perform_run(
    system: ConformanceSystem, steps: int, progress: Callable[[str], None] = lambda _: None,
    phase: Callable[[str], None] = lambda _: None,
) -> ConformanceRun:
    """`progress` gets a line after each step; `phase` is told what the run is doing as it changes,
    and so is the compile ledger, which stamps it on whatever compiles (anything compiled before
    is the system's startup)."""
    run = ConformanceRun(system)
    ledger = system.compile_ledger() if "compile_ledger" in system.capabilities else None
    calls = ledger.calls if ledger is not None else {}

    def enter(name: str) -> None:
        phase(name)
        if ledger is not None:
            ledger.phase = name

    try:
        if "grpo" in system.capabilities:
            enter("validation before the run")
            run.pre = system.validate()
            for i in range(steps):
                enter(f"step {i + 1} of {steps}")
                before = dict(calls)
                run.records.append(system.step())
                for region, n in calls.items():
                    run.compiled_calls[region] = run.compiled_calls.get(region, 0) + n - before.get(region, 0)
                if ledger is not None:
                    ledger.phase = f"the decode timing probe after step {i + 1}"
                run.decode_step_seconds.append(_bare_decode_seconds(system, run.records[-1]))
                progress(f"step {i + 1}/{steps}: {run.records[-1].line()}")
            enter("validation after the run")
            run.post = system.validate()
    except Exception as e:  # the checks report it (a recompile-limit failure is a verdict, not a crash)
        run.error = f"{type(e).__name__}: {e}".splitlines()[0]
    run.compile_cache = compile_cache_counters()
    if ledger is not None:
        run.compile_events = copy.deepcopy(ledger.events)
        run.limit_hits = list(ledger.limit_hits)
        run.compile_settings = copy.deepcopy(ledger.effective_settings())
        ledger.phase = AFTER_RUN
    return run
