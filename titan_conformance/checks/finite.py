"""Non-finite values fail: NaN or inf anywhere in what a GRPO run computed.

Every other verdict compares numbers against limits, and `NaN > limit` is False: a system whose
weights are NaN would pass them all. This check reads every value the run's steps produced
(sampled and recomputed logprobs, loss, gradient norm, rewards, advantages) and the validation
rewards, and names the first step and position where something was not finite.
"""

from __future__ import annotations

import math

import torch

from titan_conformance.checks.result import CheckResult

TOKEN_FIELDS = ("generator_logprobs", "trainer_logprobs")
SEQUENCE_FIELDS = ("rewards", "advantages")
SCALAR_FIELDS = ("loss", "grad_norm")


def _token_place(record, j: int) -> str:
    where = []
    if getattr(record, "sequence_index", None) is not None:
        where.append(f"completion {int(record.sequence_index[j])}")
    if getattr(record, "token_positions", None) is not None:
        where.append(f"token {int(record.token_positions[j])}")
    return ", ".join(where) or f"entry {j}"


def _first_bad(values: torch.Tensor) -> int | None:
    bad = (~torch.isfinite(values.double())).nonzero()
    return int(bad[0]) if bad.numel() else None


def non_finite_values(run) -> tuple[dict[str, int], list[str]]:
    """(count of non-finite values per field, where each field first had one)."""
    counts: dict[str, int] = {}
    firsts: dict[str, str] = {}
    for r in run.records:
        for name in TOKEN_FIELDS + SEQUENCE_FIELDS:
            values = getattr(r, name, None)
            if values is None or (i := _first_bad(values)) is None:
                continue
            counts[name] = counts.get(name, 0) + int((~torch.isfinite(values.double())).sum())
            place = _token_place(r, i) if name in TOKEN_FIELDS else f"completion {i}"
            firsts.setdefault(name, f"{name.replace('_', ' ')} at step {r.step}, {place} ({float(values[i])})")
        for name in SCALAR_FIELDS:
            value = getattr(r, name, None)
            if value is not None and not math.isfinite(value):
                counts[name] = counts.get(name, 0) + 1
                firsts.setdefault(name, f"{name.replace('_', ' ')} at step {r.step} ({value})")
    for label, reward in (("pre", run.pre), ("post", run.post)):
        total = getattr(reward, "total", None)
        if total is not None and not math.isfinite(total):
            counts[f"{label}_validation_reward"] = 1
            firsts[f"{label}_validation_reward"] = f"the {label}-run validation reward ({total})"
    return counts, list(firsts.values())


def check_run_finite(run) -> CheckResult:
    if not run.records:
        return CheckResult("run_finite", False, f"the GRPO run completed no step ({run.error or 'none ran'}): nothing was checked.")
    counts, firsts = non_finite_values(run)
    metrics = {"non_finite": counts, "steps": len(run.records)}
    if not counts:
        return CheckResult("run_finite", True, f"every logprob, loss, reward and advantage of {len(run.records)} steps is finite", metrics)
    return CheckResult(
        "run_finite", False,
        "Non-finite values in the GRPO run: " + "; ".join(firsts) + ". Counts: "
        + ", ".join(f"{k}={v}" for k, v in counts.items()) + ". NaN or inf weights (a corrupt checkpoint, "
        "an update that diverged), an overflow in the model's dtype, or a reward or advantage divided by zero.",
        metrics,
    )
