"""Fresh rollouts for the checks that probe the system after its run: seeded by the check's name,
and enough of them for a verdict to compare at least `min_tokens` sampled tokens."""

from __future__ import annotations

import random
import zlib

MAX_BATCHES = 8
"""Most rollout batches drawn to reach the token count (a model that ends every completion at once
compares few tokens per batch; the verdict then fails on the count, not here)."""


def sampled_completions(system, profile, salt: str, min_tokens: int) -> list:
    """Batches of `sampling.num_prompts_per_step` prompts x n, drawn until they hold `min_tokens`
    completion tokens (or MAX_BATCHES batches)."""
    rng, seed = random.Random(salt), zlib.crc32(salt.encode())
    completions: list = []
    for batch in range(MAX_BATCHES):
        problems = system.task.sample(rng, profile.sampling.num_prompts_per_step)
        completions += system.rollout(problems, seed=seed + batch)
        if sum(len(c.token_ids) for c in completions) >= min_tokens:
            break
    return completions
