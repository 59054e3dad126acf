"""Recompile budget: every compilation of every compiled region over the GRPO run, with its guard
failure reason; each region stays within recompile_limit and the limit is never hit."""

from titan_conformance.checks.recompiles import check_recompile_budget
from titan_conformance.plugin import assert_check, require


def test_recompiles_within_limit(tc_run, tc_profile):
    require(tc_run.system, "compile_ledger")
    assert_check(check_recompile_budget(tc_run, tc_profile))
