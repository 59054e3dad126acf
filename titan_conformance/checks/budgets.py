"""Time budgets: startup by phase and step time, against the profile's budget for the device class."""

from __future__ import annotations

import math
import statistics

import torch

from titan_conformance.checks.result import CheckResult
from titan_conformance.device_class import gpu_class
from titan_conformance.profile import Budget

STARTUP = ("build", "weight_load", "warmup", "compile", "capture", "first_generate")
OUTSIDE_STARTUP = ("warmup",)
"""Timed and budgeted on their own, not part of `startup`: a random checkpoint's warm-up."""
STEP = ("generate", "train", "weight_sync")


def device_class(device: torch.device) -> str:
    """cpu, or the GPU's model (`gpu_class`)."""
    if device.type != "cuda":
        return "cpu"
    return gpu_class(torch.cuda.get_device_name(device))


def measured(startup: dict[str, float], step_times: list[dict[str, float]]) -> dict[str, float]:
    """Seconds per budget key: startup phases as measured, step phases as medians over steps."""
    out = {p: startup[p] for p in STARTUP if p in startup}
    out["startup"] = sum(v for p, v in out.items() if p not in OUTSIDE_STARTUP)
    if step_times:
        for phase in STEP:
            out[phase] = statistics.median(t.get(phase, 0.0) for t in step_times)
        out["step"] = statistics.median(sum(t.values()) for t in step_times)
    return out


def compile_warmth(cache: dict[str, int]) -> str:
    """Whether the compile phase was cold, as Inductor's FX-graph cache counted it."""
    hits, misses = cache.get("fxgraph_cache_hit", 0), cache.get("fxgraph_cache_miss", 0)
    misses += cache.get("fxgraph_cache_bypass", 0)  # compiled without the cache: cold as well
    if not hits and not misses:
        return "no Inductor graphs"
    return "cold compile" if not hits else f"{hits} of {hits + misses} Inductor graphs from cache"


def budget_verdict(values: dict[str, float], budget: Budget, device_cls: str, warmth: str = "") -> CheckResult:
    limits = {k: v for k, v in budget.__dict__.items() if v is not None and k in values}
    over = {k: values[k] for k, limit in limits.items() if values[k] > limit}
    note = f" ({warmth})" if warmth else ""
    if not over:
        return CheckResult("budgets", True, f"all {len(limits)} budgets for {device_cls} met{note}", values, limits)
    detail = "; ".join(
        f"{k} took {v:.3f}s, budget {limits[k]:.3f}s (over by {v - limits[k]:.3f}s, {v / limits[k]:.1f}x)"
        for k, v in over.items()
    )
    return CheckResult("budgets", False, f"Time budget exceeded on {device_cls}{note}: {detail}.", values, limits)


def proposed_budget(values: dict[str, float], margin: float) -> dict[str, float]:
    """`margin` x each measured value, rounded up to two significant digits (at least 0.01 s), and
    never below the value itself."""
    out = {}
    for key, value in values.items():
        x = max(value * margin, 0.01)
        unit = 10.0 ** (math.floor(math.log10(x)) - 1)
        steps = math.ceil(x / unit - 1e-9)  # 0.1 * 3 is 0.30000000000000004: still 0.3
        while (budget := round(steps * unit, 6)) < value:
            steps += 1
        out[key] = budget
    return out


def check_budgets(run, profile) -> CheckResult | str:
    """The verdict, or a reason to skip when the profile budgets nothing for this device class."""
    cls = device_class(run.system.device)
    budget = profile.budgets.get(cls)
    if budget is None or all(v is None for v in budget.__dict__.values()):
        return (
            f"profile {profile.name!r} sets no budgets for device class {cls!r}: add a [budgets.{cls}] "
            "table (`titan-conformance budgets REPORT.json` proposes one from this run's report)"
        )
    values = measured(run.system.startup, [r.times for r in run.records])
    return budget_verdict(values, budget, cls, compile_warmth(run.compile_cache))
