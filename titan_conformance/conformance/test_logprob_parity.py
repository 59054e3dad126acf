"""Logprob parity: the logprob the generator sampled each token with equals what the trainer
recomputes for it, within the profile's tolerance for the dtype (exactly, in bitwise mode); both
stay within a multiple of the precision floor from a float64 oracle of the same weights; again
right after a trainer -> generator weight sync; and nothing the run computed is NaN or inf."""

from titan_conformance.checks.finite import check_run_finite
from titan_conformance.checks.parity import check_logprob_parity
from titan_conformance.checks.precision import check_precision_floor
from titan_conformance.checks.weight_sync import check_weight_sync
from titan_conformance.plugin_fixtures import assert_check, require


def test_trainer_matches_generator_on_sampled_rollouts(tc_run, tc_profile):
    require(tc_run.system, "grpo")
    assert_check(check_logprob_parity(tc_run, tc_profile))


def test_run_values_are_finite(tc_run):
    require(tc_run.system, "grpo")
    assert_check(check_run_finite(tc_run))


def test_trainer_and_generator_within_the_precision_floor(tc_run, tc_profile):
    for capability in ("grpo", "trainer_logprobs", "reference_logprobs"):
        require(tc_run.system, capability)
    assert_check(check_precision_floor(tc_run.system, tc_profile))


def test_generator_follows_trainer_after_weight_sync(tc_run, tc_profile):
    for capability in ("grpo", "trainer_logprobs", "generator_logprobs", "weight_sync"):
        require(tc_run.system, capability)
    assert_check(check_weight_sync(tc_run.system, tc_profile))
