"""Parity that scales with the precision: trainer and generator against a float64 oracle.

A fixed max_abs cannot tell a subtle mismatch (a 1%-off RoPE base, another norm eps) from bf16
rounding: on the Qwen3-0.6B shape both move the trainer-vs-generator statistics by 2-3x, while bf16
limits sit well above a clean run. So the rounding floor is measured in the same run, on the same
tokens: a fresh eager copy of the model at float64 with the trainer's current weights is the
oracle, and the same copy at the profile's dtype is the floor, the distance that rounding alone
puts between that dtype and exact arithmetic. Trainer and generator are each held to a multiple of
the floor (`tolerances.<dtype>.floor`), per statistic of |side - oracle|.

The floor comes from the reference model definition, not from the trainer: a fault on the trainer's
side (its own RoPE, its temperature) would otherwise raise the floor it is measured against.
"""

from __future__ import annotations

import torch

from titan_conformance.checks.localize import localized, worst_sequences
from titan_conformance.checks.parity import flat
from titan_conformance.checks.result import CheckResult
from titan_conformance.checks.rollouts import sampled_completions

FLOOR_TOKENS = 512
"""Tokens to compare at least: a p99 of fewer moves with every sample."""
STATISTICS = ("mean_abs", "p99_abs", "k3_kl")
FLOOR_HINT = ("Look for the RoPE base, norm eps, attention scale or masking, the sampling temperature, a "
              "lower-precision path.")
"""Today's suspects, where the system cannot say where the two sides part (`checks.localize`)."""
"""Of each side's distance to the oracle, held to `floor.<statistic>` times the floor's."""


def distance(side: torch.Tensor, oracle: torch.Tensor) -> dict[str, float]:
    """Statistics of d = oracle - side over the sampled tokens; k3 = E[expm1(d) - d] (>= 0)."""
    d = (oracle - side).double()
    a = d.abs()
    return {"mean_abs": float(a.mean()), "p99_abs": float(torch.quantile(a, 0.99)), "k3_kl": float((torch.expm1(d) - d).mean())}


def ratio(value: float, floor: float) -> float:
    if floor > 0:
        return value / floor
    return 1.0 if value == 0 else float("inf")


def floor_verdict(sampled: torch.Tensor, trainer: torch.Tensor, floor: torch.Tensor, oracle: torch.Tensor,
                  limits: dict[str, float], dtype: str) -> CheckResult:
    """The verdict over flat logprobs of the same tokens: the generator's as sampled, the trainer's,
    the floor's (eager at `dtype`) and the oracle's (eager at float64)."""
    tokens = int(sampled.numel())
    values = {"generator": sampled, "trainer": trainer, "floor": floor, "oracle": oracle}
    bad = [k for k, v in values.items() if not torch.isfinite(v).all()]
    if bad:
        return CheckResult(
            "precision_floor", False,
            f"Non-finite logprobs from the {', '.join(bad)} over {tokens} sampled tokens: the precision floor "
            "cannot be measured (NaN or inf weights, or an overflow).", {"tokens": tokens}, limits,
        )
    floor_stats = distance(floor, oracle)
    sides = {side: distance(values[side], oracle) for side in ("trainer", "generator")}
    ratios = {side: {k: ratio(v, floor_stats[k]) for k, v in stats.items()} for side, stats in sides.items()}
    metrics = {"tokens": tokens, "dtype": dtype, "floor": floor_stats, **{f"{s}_vs_oracle": v for s, v in sides.items()},
               **{f"{s}_ratio": v for s, v in ratios.items()}}
    pair = ratio(float((trainer - sampled).abs().mean()), floor_stats["mean_abs"])
    metrics["pair_ratio_mean_abs"] = pair
    over = [(side, k, r) for side, rs in ratios.items() for k, r in rs.items() if r > limits[k]]
    shown = "; ".join(f"{side} {', '.join(f'{k} {r:.2f}x' for k, r in rs.items())}" for side, rs in ratios.items())
    shown += f"; trainer vs generator mean {pair:.2f}x"
    if not over and pair <= limits["pair_mean_abs"]:
        return CheckResult(
            "precision_floor", True,
            f"trainer and generator within the precision floor's multiples over {tokens} tokens ({shown}; floor mean "
            f"|diff| {floor_stats['mean_abs']:.2e} for {dtype} vs float64)", metrics, limits,
        )
    broken = [
        f"the {side}'s {k} {sides[side][k]:.3e} is {r:.2f}x the floor's {floor_stats[k]:.3e} (allowed {limits[k]:g}x)"
        for side, k, r in over
    ]
    if pair > limits["pair_mean_abs"]:
        broken.append(f"trainer and generator differ by a mean {pair:.2f}x the floor's mean |diff| "
                      f"(allowed {limits['pair_mean_abs']:g}x)")
    faulty = " and ".join(sorted({side for side, _, _ in over})) or "trainer or the generator"
    return CheckResult(
        "precision_floor", False,
        f"Against a float64 oracle of the same weights over {tokens} sampled tokens, {'; '.join(broken)}. {dtype} "
        f"rounding alone (an eager {dtype} copy of the model) accounts for less: the {faulty} computes a slightly "
        f"different model than these weights describe. {FLOOR_HINT}",
        metrics, limits,
    )


def check_precision_floor(system, profile) -> CheckResult:
    completions = sampled_completions(system, profile, "precision-floor", max(FLOOR_TOKENS, profile.tolerances.min_tokens))
    sampled = flat([torch.tensor(c.logprobs) for c in completions])
    if sampled.numel() < profile.tolerances.min_tokens:
        return CheckResult(
            "precision_floor", False,
            f"only {sampled.numel()} sampled tokens to compare, fewer than tolerances.min_tokens = "
            f"{profile.tolerances.min_tokens}: the rollouts compare nothing.",
        )
    dtype = getattr(torch, profile.model.dtype)
    limits = {k: getattr(profile.tolerance.floor, k) for k in (*STATISTICS, "pair_mean_abs")}
    trainer = flat(system.trainer_logprobs(completions))
    result = floor_verdict(
        sampled, trainer, flat(system.reference_logprobs(completions, dtype)),
        flat(system.reference_logprobs(completions, torch.float64)), limits, profile.model.dtype,
    )
    return localized(result, system, profile, FLOOR_HINT, worst_sequences(completions, trainer - sampled))
