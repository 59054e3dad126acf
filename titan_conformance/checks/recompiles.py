"""Recompile budget: every region's compile count under recompile_limit, and the limit never hit.

Under tensor parallelism every rank is a process with its own Dynamo cache and budget, so counts
are per region and rank (`CompileEvent.key`). The verdict also reports each region's observed
maximum over ranks and a recommended recompile_limit (observed + margin): the number a profile's
`compile.recompile_limit` should be set to, from a measurement rather than a guess.
"""

from __future__ import annotations

import re

from titan_conformance.checks.result import CheckResult
from titan_conformance.protocol import CompileEvent, CompileLedger


def recompile_margin(observed: int) -> int:
    """Head-room of the recommended recompile_limit over an observed count: half of it, at least 1.
    Room for a shape class the run did not reach (batch or sequence 1 specializes, one more
    Inductor size guard), while a doubling exceeds it for any count >= 2. (An input that alternates
    between AsyncCollectiveTensor and Tensor fails the check whatever the count: `recompile_verdict`.)"""
    return max(1, observed // 2)


_TYPE_ID = re.compile(r"(___check_type_id\(\w+), \d+\)")
_ACT_GUARD = re.compile(  # a graph traced on a Tensor / on an AsyncCollectiveTensor, fed the other
    r"___check_type_id\((\w+), \d+\), type=<class '[\w.]*AsyncCollectiveTensor'>"
    r"|expected type of '(\w+)' to be a tensor type, ' but found <class '[\w.]*AsyncCollectiveTensor'>"
)


def _without_type_ids(text: str) -> str:
    """Dynamo names a type by its id, which differs per process: one line for all ranks."""
    return _TYPE_ID.sub(r"\1, <id>)", text)


def observed_max(events: list[CompileEvent]) -> dict[str, int]:
    """Per region, the most compilations any one rank (or the single process) made."""
    per_key: dict[tuple[str, int | None], int] = {}
    for e in events:
        per_key[(e.region, e.rank)] = per_key.get((e.region, e.rank), 0) + 1
    out: dict[str, int] = {}
    for (region, _), n in per_key.items():
        out[region] = max(out.get(region, 0), n)
    return out


def recommended_limits(events: list[CompileEvent]) -> dict[str, int]:
    """Per region: observed maximum + margin (see `recompile_margin`)."""
    return {region: n + recompile_margin(n) for region, n in observed_max(events).items()}


def alternating_act_inputs(events: list[CompileEvent], limit_hits: list[str] = ()) -> list[str]:
    """Inputs whose recompile guard (or the last reason of a limit hit) was a type change between
    AsyncCollectiveTensor and Tensor."""
    texts = [e.reason for e in events if e.index > 0] + list(limit_hits)
    return sorted({m.group(1) or m.group(2) for t in texts for m in _ACT_GUARD.finditer(t)})


def region_role(region: str) -> str:
    """The role a region belongs to: "generator" of "generator.TransformerBlock[rank 0]"."""
    return region.split(".", 1)[0]


def compiled_after_startup(events: list[CompileEvent]) -> list[str]:
    """Each compile after startup: its region, when (the run's phase), its guard failure, inputs."""
    out = []
    for e in events:
        if e.after_startup:
            why = "its first compilation (nothing of it compiled at startup)" if e.index == 0 else (
                f"guard failure `{_without_type_ids(e.reason)}`")
            out.append(f"{e.key} compiled at {e.phase} on {why}, inputs {' '.join(e.inputs) or 'none recorded'}")
    return out


RUN_WINDOW = (
    "Judged over the run: the validations before and after it, every GRPO step and the decode "
    "timing probe after each; the checks' own probes (other batch sizes, eager copies) run after "
    "it and are outside the window by construction (the run's ledger is taken as it ends)."
)
"""What `compile.zero_compiles_after_startup` judges in a run of `run.perform_run`."""
AFTER_STARTUP_FIX = (
    "Startup (its compile phase) must compile every shape class and dtype the run uses, and the run "
    "must hand the compiled blocks inputs as startup compiled them: the guard names the input whose "
    "dtype, size class (a size that is or becomes 1, a new Inductor size range), stride or type changed."
)


def recompile_verdict(
    events: list[CompileEvent], limit_hits: list[str], limit: int, run_error: str | None = None,
    max_compiles: dict[str, int] | None = None, zero_after_startup: bool = False, window: str = RUN_WINDOW,
) -> CheckResult:
    """`max_compiles`: per role (the region's name up to its first dot), a tighter cap than `limit`.
    `zero_after_startup` (`compile.zero_compiles_after_startup`): any compile after startup fails;
    `window` says what the caller's run covered after startup."""
    counts: dict[str, int] = {}
    for e in events:
        counts[e.key] = counts.get(e.key, 0) + 1
    table = CompileLedger(events=list(events), limit_hits=list(limit_hits)).format()
    caps = max_compiles or {}
    over = {r: n for r, n in counts.items() if n > limit}
    over_cap = {r: n for r, n in counts.items() if n > caps.get(region_role(r), n) and r not in over}
    late = compiled_after_startup(events)
    metrics = {
        "compiles_per_region": counts,
        "compiles_after_startup": len(late),
        "limit_hits": list(limit_hits),
        "max": max(counts.values(), default=0),
        "observed_max": observed_max(events),
        "recommended_recompile_limit": recommended_limits(events),
    }
    limits = {"recompile_limit": limit, **{f"max_compiles.{role}": n for role, n in caps.items()},
              "zero_compiles_after_startup": zero_after_startup}
    limit_error = bool(run_error and re.search(r"recompile.?limit", run_error, re.IGNORECASE))
    # A graph per tensor type doubles a region's graphs whatever the limit leaves room for: a block
    # that compiles once (the generator's) doubled to 2 stays under any useful limit.
    act = alternating_act_inputs(events, limit_hits)
    within_budget = not over and not over_cap and not limit_hits and not limit_error and not act
    frozen = zero_after_startup and bool(late)
    if within_budget and not frozen:
        after = (f"none after startup (compile.zero_compiles_after_startup). {window}" if zero_after_startup
                 else f"{len(late)} after startup (not judged: compile.zero_compiles_after_startup is off).")
        return CheckResult("recompile_budget", True, f"compiles per region {counts} within recompile_limit={limit}; {after}",
                           metrics, limits)
    if within_budget:
        return CheckResult(
            "recompile_budget", False,
            f"Compiled after startup ({len(late)}; compile.zero_compiles_after_startup = true, as vLLM's "
            f"fail_on_recompile stance after its warm-up): {'; '.join(late)}. {AFTER_STARTUP_FIX} {window}\n{table}",
            metrics, limits,
        )
    causes = [f"{r} compiled {n} times > recompile_limit={limit}" for r, n in over.items()]
    causes += [f"{r} compiled {n} times > compile.max_compiles.{region_role(r)}={caps[region_role(r)]}"
               for r, n in over_cap.items()]
    causes += [f"{_without_type_ids(h)} (Dynamo fell back to eager, or raised under fullgraph)" for h in limit_hits]
    if act and not over and not limit_hits:
        causes.append("a compiled block recompiled for another tensor type of the same input (within the limit, still a graph per type)")
    if frozen:
        causes.append(f"compiled after startup (compile.zero_compiles_after_startup = true): {'; '.join(late)}")
    if run_error:
        causes.append(f"the run failed: {run_error}")
    reasons = sorted({_without_type_ids(e.reason) for e in events if e.index > 0})
    fix = (
        "Make the varying input dynamic or stable (mark it dynamic, keep its type and strides fixed) "
        "or raise recompile_limit (compile.max_compiles for a role's cap) if the count is expected."
    )
    if act:
        fix = (
            f"Input {', '.join(repr(a) for a in act)} of the compiled block alternates between "
            "AsyncCollectiveTensor (a RowwiseParallel output not yet waited on) and Tensor, and each "
            "type is its own graph: set parallel.unwrap_async = true in the profile (resolves the "
            "AsyncCollectiveTensor with wait_tensor before each compiled block), or wait on the "
            "collective's output before the block. " + fix
        )
    return CheckResult(
        "recompile_budget",
        False,
        "Recompile budget exceeded: " + "; ".join(causes) + ". Guard failures that caused recompiles: "
        + ("; ".join(reasons) or "none recorded") + f". {fix} Observed maximum per region: "
        f"{metrics['observed_max']}.\n" + table,
        metrics,
        limits,
    )


def check_recompile_budget(run, profile) -> CheckResult:
    """Over the whole GRPO run: steps of different lengths, prefill and decode, fwd and bwd."""
    c = profile.compile
    return recompile_verdict(
        run.compile_events, run.limit_hits, c.recompile_limit, run.error, c.max_compiles, c.zero_compiles_after_startup
    )
