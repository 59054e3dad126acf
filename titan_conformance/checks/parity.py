"""Logprob parity: statistics of trainer-minus-generator logprob differences, and their verdict.

A non-finite difference (NaN or inf on either side) fails whatever the tolerance: `x > limit` is
False for NaN, so a statistics-only verdict would pass a model whose weights are NaN.
"""

from __future__ import annotations

from typing import Callable

import torch

from titan_conformance.checks.localize import localized
from titan_conformance.checks.logprob_semantics import sampling_hint
from titan_conformance.checks.result import CheckResult
from titan_conformance.profile import Tolerance

Locator = Callable[[int], str]
"""Names where entry i of a flat tensor of logprobs came from, e.g. "step 3, completion 5, token 2"."""


def diff_stats(diff: torch.Tensor, max_abs_tolerance: float) -> dict[str, float]:
    """diff = trainer - generator logprob per sampled token (1-D); statistics of its finite entries,
    with `non_finite` the count of the others."""
    d = diff.double()
    finite = torch.isfinite(d)
    non_finite = int((~finite).sum())
    d = d[finite]
    a = d.abs()
    # Tokens were sampled from the generator, so E[exp(r) - 1 - r] with r = trainer - generator
    # is Schulman's k3 estimate of KL(generator || trainer); expm1 keeps it exact for tiny r.
    empty = not d.numel()
    return {
        "tokens": int(diff.numel()),
        "non_finite": non_finite,
        "mean": 0.0 if empty else float(d.mean()),
        "mean_abs": 0.0 if empty else float(a.mean()),
        "max_abs": 0.0 if empty else float(a.max()),
        "p99_abs": 0.0 if empty else float(torch.quantile(a, 0.99)),
        "frac_over_tolerance": 0.0 if empty else float((a > max_abs_tolerance).double().mean()),
        "k3_kl": 0.0 if empty else float((torch.expm1(d) - d).mean()),
        "mean_exp_abs": 0.0 if empty else float(torch.exp(a).mean()),
    }


SAME_MODEL_HINT = (
    "Trainer and generator do not compute the same model: look for a config that differs between "
    "them (RoPE theta, norm eps, dtype, attention op, sampling temperature, top-p/top-k, logprobs mode, "
    "compile settings) or "
    "weights that were not synced."
)


def rows_locator(lengths: list[int], prefix: str = "") -> Locator:
    """Entry i of the concatenation of rows of these lengths -> "completion r, token t"."""
    starts = torch.tensor([0, *lengths]).cumsum(0)

    def locate(i: int) -> str:
        row = int(torch.searchsorted(starts, torch.tensor(i), right=True)) - 1
        return f"{prefix}completion {row}, token {i - int(starts[row])}"

    return locate


def first_non_finite(values: torch.Tensor) -> int | None:
    bad = (~torch.isfinite(values)).nonzero()
    return int(bad[0]) if bad.numel() else None


def parity_verdict(
    name: str, what: str, diff: torch.Tensor, tol: Tolerance, bitwise: bool, hint: str = SAME_MODEL_HINT,
    locate: Locator | None = None, min_tokens: int = 1,
) -> CheckResult:
    """`what` names the two sides, e.g. "trainer vs generator logprobs"; `hint` says where to look;
    `locate` names where a non-finite entry came from; fewer than `min_tokens` compared fails."""
    if diff.numel() < min_tokens:
        too_few = (f"only {diff.numel()} tokens were compared, fewer than the {min_tokens} a verdict needs "
                   "(tolerances.min_tokens)")
        # The few there are may already differ: say that first (a generator computing another model
        # often ends its rollouts early), and never pass on them.
        few = parity_verdict(name, what, diff, tol, bitwise, hint, locate) if diff.numel() else None
        if few is not None and not few.passed:
            few.message += f" ({too_few}: rollouts cut short.)"
            few.limits["min_tokens"] = min_tokens
            return few
        return CheckResult(
            name, False, f"{what}: {too_few}: empty or cut-short rollouts compare nothing.",
            {"tokens": int(diff.numel())}, {"min_tokens": min_tokens},
        )
    stats = diff_stats(diff, 0.0 if bitwise else tol.max_abs)
    if bitwise:
        limits = {"max_abs": 0.0}
        over = {"max_abs": stats["max_abs"]} if stats["max_abs"] > 0 else {}
    else:
        limits = {"max_abs": tol.max_abs, "p99_abs": tol.p99_abs, "mean_abs": tol.mean_abs}
        over = {k: stats[k] for k, limit in limits.items() if stats[k] > limit}
    limits["min_tokens"] = min_tokens
    if stats["non_finite"]:
        first = first_non_finite(diff)
        where = locate(first) if locate else f"entry {first}"
        return CheckResult(
            name, False,
            f"{what}: {stats['non_finite']} of {stats['tokens']} logprob differences are NaN or inf (the first "
            f"at {where}, value {float(diff[first])}); a non-finite logprob fails whatever the tolerance. "
            "Look for NaN or inf weights (a corrupt checkpoint, a diverged update) or an overflow in the "
            f"model's dtype.",
            stats, limits,
        )
    summary = ", ".join(f"{k}={stats[k]:.3e}" for k in ("max_abs", "p99_abs", "mean_abs", "k3_kl"))
    if not over:
        return CheckResult(name, True, f"{what} within tolerance over {stats['tokens']} tokens ({summary})", stats, limits)
    broken = "; ".join(f"{k} {v:.3e} > {limits[k]:.3e}" for k, v in over.items())
    mode = "bitwise (exact) mode" if bitwise else "tolerance"
    return CheckResult(
        name,
        False,
        f"{what} differ beyond {mode}: {broken} ({stats['frac_over_tolerance']:.1%} of "
        f"{stats['tokens']} tokens over). {hint}",
        stats,
        limits,
    )


def flat(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([r.flatten().double() for r in rows]) if rows else torch.zeros(0, dtype=torch.float64)


def run_locator(records) -> Locator:
    """Entry i of the run's concatenated logprob differences -> its step, completion and position."""
    sizes = torch.tensor([0, *(r.logprob_diff.numel() for r in records)]).cumsum(0)

    def locate(i: int) -> str:
        k = int(torch.searchsorted(sizes, torch.tensor(i), right=True)) - 1
        r, j = records[k], i - int(sizes[k])
        where = f"step {r.step}"
        if getattr(r, "sequence_index", None) is not None:
            where += f", completion {int(r.sequence_index[j])}"
        if getattr(r, "token_positions", None) is not None:
            where += f", token {int(r.token_positions[j])} of the completion"
        sides = [(side, getattr(r, f"{side}_logprobs", None)) for side in ("trainer", "generator")]
        bad = [side for side, lp in sides if lp is not None and not torch.isfinite(lp[j])]
        return where + (f" (non-finite on the {' and '.join(bad)} side)" if bad else "")

    return locate


def check_logprob_parity(run, profile) -> CheckResult:
    """Trainer vs generator over every sampled token of the run's GRPO steps; a failure names where
    the two sides part (`checks.localize`)."""
    if run.error and not run.records:
        return CheckResult("logprob_parity", False, f"the GRPO run failed before any step: {run.error}")
    diff = flat([r.logprob_diff for r in run.records])
    tol, bitwise = profile.tolerance, profile.tolerances.bitwise
    result = parity_verdict(
        "logprob_parity", "trainer vs generator logprobs over the run's rollouts", diff, tol, bitwise,
        hint=sampling_hint(profile.sampling.spec, diff, 0.0 if bitwise else tol.max_abs, SAME_MODEL_HINT),
        locate=run_locator(run.records), min_tokens=profile.tolerances.min_tokens,
    )
    # The run's completions were sampled under weights the trainer has moved on from since: a fresh
    # rollout of the system as it is now is probed.
    return localized(result, run.system, profile, SAME_MODEL_HINT)
