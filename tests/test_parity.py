"""Trainer vs native generator: the same weights give the same per-token logprobs."""

import pytest
import torch

from titan_conformance.providers.grpo import rollout_batch

TOLERANCE = 1e-4


def logprob_diff(system, seed: int = 7) -> torch.Tensor:
    problems = system.task.validation_set(16, seed=seed)
    completions = system.rollout(problems, seed=seed)
    batch = rollout_batch(completions, torch.zeros(len(completions)), system.tokenizer.pad_id, system.device)
    trainer = system.trainer.logprobs(batch.tokens)
    return (trainer - batch.generator_logprobs)[batch.completion_mask]


@pytest.mark.parametrize("which", ["eager_system", "compiled_system"])
def test_trainer_and_generator_logprobs_match_fp32(which, request):
    system = request.getfixturevalue(which)
    diff = logprob_diff(system)
    assert diff.numel() > 100
    assert diff.abs().max() <= TOLERANCE, f"max |diff| = {diff.abs().max():.3e}"


def test_wrong_rope_theta_in_generator_is_caught(eager_system):
    model = eager_system.generator.model
    good = model.args
    model.args = good.replace(rope_theta=good.rope_theta * 1.5)
    try:
        diff = logprob_diff(eager_system)
    finally:
        model.args = good
    assert diff.abs().max() > 100 * TOLERANCE


def test_step_reports_trainer_minus_generator_diff(compiled_system):
    record = compiled_system.step()
    assert record.logprob_diff.numel() > 100
    assert record.logprob_diff.abs().max() <= TOLERANCE
    assert 0 < record.avg_tokens <= compiled_system.profile.sampling.max_tokens
