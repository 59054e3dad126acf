"""Logprob parity: statistics of trainer-minus-generator logprob differences, and their verdict."""

from __future__ import annotations

import torch

from titan_conformance.checks.result import CheckResult
from titan_conformance.system.profile import Tolerance


def diff_stats(diff: torch.Tensor, max_abs_tolerance: float) -> dict[str, float]:
    """diff = trainer - generator logprob per sampled token (1-D)."""
    d = diff.double()
    a = d.abs()
    # Tokens were sampled from the generator, so E[exp(r) - 1 - r] with r = trainer - generator
    # is Schulman's k3 estimate of KL(generator || trainer).
    k3 = (torch.exp(d) - 1 - d).mean()
    return {
        "tokens": int(d.numel()),
        "mean": float(d.mean()),
        "mean_abs": float(a.mean()),
        "max_abs": float(a.max()),
        "p99_abs": float(torch.quantile(a, 0.99)) if d.numel() else 0.0,
        "frac_over_tolerance": float((a > max_abs_tolerance).double().mean()),
        "k3_kl": float(k3),
        "mean_exp_abs": float(torch.exp(a).mean()),
    }


SAME_MODEL_HINT = (
    "Trainer and generator do not compute the same model: look for a config that differs between "
    "them (RoPE theta, dtype, attention op, compile settings) or weights that were not synced."
)


def parity_verdict(
    name: str, what: str, diff: torch.Tensor, tol: Tolerance, bitwise: bool, hint: str = SAME_MODEL_HINT
) -> CheckResult:
    """`what` names the two sides, e.g. "trainer vs generator logprobs"; `hint` says where to look."""
    if diff.numel() == 0:
        return CheckResult(name, False, f"{what}: no tokens were compared (empty rollouts?).")
    stats = diff_stats(diff, 0.0 if bitwise else tol.max_abs)
    if bitwise:
        limits = {"max_abs": 0.0}
        over = {"max_abs": stats["max_abs"]} if stats["max_abs"] > 0 else {}
    else:
        limits = {"max_abs": tol.max_abs, "p99_abs": tol.p99_abs, "mean_abs": tol.mean_abs}
        over = {k: stats[k] for k, limit in limits.items() if stats[k] > limit}
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


def profile_tolerance(profile) -> Tolerance:
    return getattr(profile.tolerances, profile.model.dtype)


def check_logprob_parity(run, profile) -> CheckResult:
    """Trainer vs generator over every sampled token of the run's GRPO steps."""
    if run.error and not run.records:
        return CheckResult("logprob_parity", False, f"the GRPO run failed before any step: {run.error}")
    diff = flat([r.logprob_diff for r in run.records])
    return parity_verdict(
        "logprob_parity", "trainer vs generator logprobs over the run's rollouts", diff,
        profile_tolerance(profile), profile.tolerances.bitwise,
    )
