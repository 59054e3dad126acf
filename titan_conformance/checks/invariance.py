"""Batch invariance of the trainer, and prefill-vs-decode parity of the generator."""

from __future__ import annotations

import torch

from titan_conformance.checks.localize import localized, worst_sequences
from titan_conformance.checks.parity import flat, parity_verdict, rows_locator
from titan_conformance.checks.result import CheckResult
from titan_conformance.checks.rollouts import sampled_completions
from titan_conformance.profile import Tolerance


def check_batch_invariance(system, profile) -> CheckResult:
    """The same sequences scored as a set of m and inside a set of n give the same logprobs (how a
    provider batches them is its own: ours scores at the trainer's training shape, so the short
    sequences sit among empty rows in one case and among other rollouts in the other)."""
    completions = sampled_completions(system, profile, "batch-invariance", 1)
    full = system.trainer_logprobs(completions)
    # Short sequences alone (narrower padding, smaller batch) vs inside the whole batch.
    order = sorted(range(len(completions)), key=lambda i: len(completions[i].token_ids))
    part = order[: max(2, len(order) // 4)]
    alone = system.trainer_logprobs([completions[i] for i in part])
    tol = profile.tolerance
    limit = tol.batch_invariance_max_abs
    batch_tol = Tolerance(max_abs=limit, p99_abs=limit, mean_abs=limit)
    return parity_verdict(
        "batch_invariance",
        f"trainer logprobs of {len(part)} sequences scored as a set of {len(part)} vs in one of {len(completions)}",
        flat(alone) - flat([full[i] for i in part]), batch_tol, profile.tolerances.bitwise,
        hint="Batch composition leaks into a sequence's logprobs: padding seen through the attention "
        "mask, packed sequences attending across their boundaries, or kernels whose reduction order "
        "depends on the batch.",
        locate=rows_locator([len(a) for a in alone]),
    )


def check_prefill_decode(system, profile) -> CheckResult:
    """Decode-time logprobs (KV cache) equal a second prefill over prompt + generated tokens."""
    completions = sampled_completions(system, profile, "prefill-vs-decode", profile.tolerances.min_tokens)
    decoded = flat([torch.tensor(c.logprobs) for c in completions])
    prefilled = flat(system.generator_logprobs(completions))
    result = parity_verdict(
        "prefill_decode", "generator decode (KV cache) vs prefill logprobs", decoded - prefilled,
        profile.tolerance, profile.tolerances.bitwise,
        hint="The KV-cache decode path disagrees with a fresh prefill: stale or misplaced cache "
        "entries, or wrong decode positions.",
        locate=rows_locator([len(c.token_ids) for c in completions]), min_tokens=profile.tolerances.min_tokens,
    )
    # Said alongside the hint: the probes compare the prefill with the trainer, and the decoded
    # logprobs (the sampled ones) with both.
    return localized(result, system, profile, None, worst_sequences(completions, decoded - prefilled))
