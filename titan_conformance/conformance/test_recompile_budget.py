"""Recompile budget: every compilation of every compiled region over the GRPO run, with its guard
failure reason; each region stays within recompile_limit and the limit is never hit. One compile
config: the trainer's and the generator's regions compiled with the same effective settings. And
every compiled region ran compiled during the run (not an eager run with a compile at startup)."""

import pytest

from titan_conformance.checks.compile_config import compile_config_verdict, compiled_regions_ran_verdict
from titan_conformance.checks.recompiles import check_recompile_budget
from titan_conformance.plugin_fixtures import assert_check, require


def test_recompiles_within_limit(tc_run, tc_profile):
    require(tc_run.system, "compile_ledger")
    assert_check(check_recompile_budget(tc_run, tc_profile))


def test_trainer_and_generator_compile_alike(tc_run):
    require(tc_run.system, "compile_ledger")
    verdict = compile_config_verdict(tc_run.system.compile_ledger())
    if verdict is None:
        pytest.skip("the provider's ledger records no compile settings of a trainer and a generator region")
    assert_check(verdict)


def test_compiled_regions_ran_during_the_run(tc_run):
    for capability in ("grpo", "compile_ledger"):
        require(tc_run.system, capability)
    assert_check(compiled_regions_ran_verdict(tc_run.compile_settings, tc_run.compiled_calls))
