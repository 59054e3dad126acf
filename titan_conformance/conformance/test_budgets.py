"""Budgets: startup by phase and GRPO step time within the profile's budget for the device class."""

from titan_conformance.checks.budgets import check_budgets
from titan_conformance.plugin import assert_check, require


def test_startup_and_step_time_within_budget(tc_run, tc_profile):
    require(tc_run.system, "startup_phases")
    assert_check(check_budgets(tc_run, tc_profile))
