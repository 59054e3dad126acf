"""Weight-sync parity: after a trainer step, the generator matches the new weights, not the old."""

from __future__ import annotations

import random

from titan_conformance.checks.parity import flat, parity_verdict, profile_tolerance
from titan_conformance.checks.result import CheckResult


def check_weight_sync(system, profile) -> CheckResult:
    tol = profile_tolerance(profile)
    problems = system.task.sample(random.Random("weight-sync"), profile.sampling.num_prompts_per_step)
    completions = system.rollout(problems, seed=4242)
    trainer_before = flat(system.trainer_logprobs(completions))
    generator_before = flat(system.generator_logprobs(completions))
    system.step()  # trains, then syncs
    trainer_after = flat(system.trainer_logprobs(completions))
    generator_after = flat(system.generator_logprobs(completions))

    already = parity_verdict(
        "weight_sync", "generator vs trainer logprobs before the check's step", generator_before - trainer_before,
        tol, profile.tolerances.bitwise,
        hint="The generator was already out of sync after the run's earlier steps: a weight sync did not land.",
    )
    if not already.passed:
        return already
    # The parity noise seen before the step is the floor under which movement means nothing.
    noise = float((generator_before - trainer_before).abs().max())
    trainer_moved = float((trainer_after - trainer_before).abs().max())
    generator_moved = float((generator_after - generator_before).abs().max())
    if trainer_moved <= noise:
        return CheckResult(
            "weight_sync", False,
            f"The trainer step moved no logprob by more than {trainer_moved:.2e}, under the parity noise "
            f"{noise:.2e} before it, so a sync cannot be told from none; raise grpo.lr in the profile.",
        )
    result = parity_verdict(
        "weight_sync", "generator vs trainer logprobs after a trainer step and weight sync",
        generator_after - trainer_after, tol, profile.tolerances.bitwise,
        hint="The generator does not compute the trainer's new weights: a partial or mis-mapped sync.",
    )
    result.metrics.update(
        parity_noise_before_max_abs=noise, trainer_moved_max_abs=trainer_moved, generator_moved_max_abs=generator_moved
    )
    if generator_moved <= noise:
        result.passed = False
        result.message = (
            f"Weight sync did not land: across a trainer step that moved the trainer's logprobs by up to "
            f"{trainer_moved:.2e}, the generator's did not change (max {generator_moved:.2e}); it still "
            f"samples from old weights (max diff to the trainer {result.metrics['max_abs']:.2e})."
        )
    return result
