"""Budgets: startup by phase and GRPO step time within the profile's budget for the device class,
and generate time per decode step within a multiple of a bare decode step timed in the same run."""

import pytest

from titan_conformance.checks.budgets import check_budgets
from titan_conformance.checks.speed import check_generate_overhead
from titan_conformance.plugin_fixtures import assert_check, require


def test_startup_and_step_time_within_budget(tc_run, tc_profile, tc_gpu_sharing):
    require(tc_run.system, "startup_phases")
    if tc_gpu_sharing:
        pytest.skip(f"absolute time budgets are not judged here: {tc_gpu_sharing}")
    assert_check(check_budgets(tc_run, tc_profile))


def test_generate_overhead_within_ratio(tc_run, tc_profile):
    for capability in ("grpo", "decode_timing"):
        require(tc_run.system, capability)
    assert_check(check_generate_overhead(tc_run, tc_profile))
