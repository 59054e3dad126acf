"""GRPO learns: validation reward after the run's steps is above the start."""

from titan_conformance.checks.learning import check_learning
from titan_conformance.plugin_fixtures import assert_check, require


def test_validation_reward_rises(tc_run, tc_profile):
    require(tc_run.system, "grpo")
    assert_check(check_learning(tc_run, tc_profile))
