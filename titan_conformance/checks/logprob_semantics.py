"""Naming a top-p/top-k logprob-semantics mismatch in a failed parity verdict.

A generator that reports processed logprobs (renormalized over the tokens top-k/top-p keep) while
the trainer scores the full tempered softmax, or the reverse, or a generator that truncates with a
top-p the profile does not declare, shifts every token's logprob difference by log(kept mass): all
one sign, bounded by -log(top_p), and nothing else numeric looks broken. Other mismatches (a
temperature, a RoPE base) move tokens both ways: the top ones up and the tail down.
"""

from __future__ import annotations

import torch

from titan_conformance.profile import SamplingSpec

MIN_SIGNED = 20
"""Fewest over-tolerance tokens, all of one sign, that make the signature (one chance in 2**20 for
a symmetric mismatch)."""


def kept_mass_signature(diff: torch.Tensor, max_abs: float) -> str | None:
    """diff = trainer - generator per token: which side reports the higher logprob at every token
    over `max_abs` ("generator" or "trainer"), where there are at least MIN_SIGNED and none the
    other way; None otherwise."""
    over = diff[diff.abs() > max_abs]
    if over.numel() < MIN_SIGNED:
        return None
    if bool((over < 0).all()):
        return "generator"
    return "trainer" if bool((over > 0).all()) else None


def sampling_hint(spec: SamplingSpec, diff: torch.Tensor, max_abs: float, same_model_hint: str) -> str:
    """The paragraph a failed trainer-vs-generator verdict ends with: the kept-mass signature named
    where the differences carry it, the profile's sampling spec always."""
    declared = f"The profile declares {spec.describe()}."
    higher = kept_mass_signature(diff, max_abs)
    if higher is None:
        return (f"{same_model_hint} {declared} If one side truncates with top-p/top-k or reports another logprobs "
                "mode than it, the difference is log(kept mass) per token.")
    lower = "trainer" if higher == "generator" else "generator"
    return (
        f"Every differing token is higher on the {higher} side (mean |diff| {float(diff.abs().mean()):.3e}, max "
        f"{float(diff.abs().max()):.3e}): the signature of log(kept mass). The {higher}'s logprobs are "
        f"renormalized over the tokens top-p/top-k keep (processed) while the {lower}'s are the full tempered "
        f"softmax (raw), or the {higher} truncates with a top-p/top-k the profile does not declare. {declared} "
        "Check the generator's logprobs mode (vLLM: logprobs_mode processed_logprobs vs raw_logprobs) and the "
        "top_p/top_k it samples with, and that the trainer scores the same distribution "
        "(`trainer.logprobs.scoring_logits`); every importance ratio is off by this factor."
    )
