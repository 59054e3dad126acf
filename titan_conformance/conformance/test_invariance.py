"""Batch invariance of the trainer (the same sequences in batch m and batch n), and prefill vs
decode parity of the generator (KV-cache decode vs a second prefill over prompt + completion)."""

from titan_conformance.checks.invariance import check_batch_invariance, check_prefill_decode
from titan_conformance.plugin_fixtures import assert_check, require


def test_trainer_is_batch_invariant(tc_run, tc_profile):
    require(tc_run.system, "trainer_logprobs")
    assert_check(check_batch_invariance(tc_run.system, tc_profile))


def test_generator_decode_matches_prefill(tc_run, tc_profile):
    require(tc_run.system, "generator_logprobs")
    assert_check(check_prefill_decode(tc_run.system, tc_profile))
