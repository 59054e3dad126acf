"""How the system runs, each FAILING its check: a generator compiled with other Inductor options
than the trainer, a generator that runs eagerly after its startup compile, a generate phase made
5x slower (a ratio to a bare decode step measured in the same run, which holds on a noisy CPU)."""

from __future__ import annotations

import dataclasses

import pytest

import faults
from titan_conformance.checks.compile_config import compile_config_verdict, compiled_regions_ran_verdict
from titan_conformance.checks.speed import check_generate_overhead
from titan_conformance.providers.reference import build_system
from test_planted_faults import compiled_profile, run_with


def compiled(steps: int = 2):
    prof = compiled_profile(backend="inductor", dynamic=True, fullgraph=True)
    return dataclasses.replace(prof, run=dataclasses.replace(prof.run, steps=steps))


@pytest.fixture(scope="module")
def healthy():
    prof = compiled(steps=4)
    run, system = run_with(build_system, prof)
    yield run, prof
    system.close()


def test_healthy_compiled_run_passes(healthy):
    run, prof = healthy
    assert compile_config_verdict(run.system.compile_ledger()).passed
    ran = compiled_regions_ran_verdict(run.compile_settings, run.compiled_calls)
    assert ran.passed and all(n > 0 for n in ran.metrics["compiled_calls"].values()), ran.message
    speed = check_generate_overhead(run, prof)
    assert speed.passed and 1 <= speed.metrics["ratio"] < prof.speed.generate_overhead, speed.message


def test_a_generator_compiled_with_other_options_fails_the_compile_config_check():
    prof = compiled(steps=1)
    with faults.generator_compiled_with_other_options(prof) as system:
        result = compile_config_verdict(system.compile_ledger())
    assert not result.passed and "options {'max_autotune_pointwise': True} vs {}" in result.message, result.message


def test_a_generator_that_runs_eagerly_fails_the_compiled_regions_check():
    prof = compiled()
    run, system = run_with(faults.eager_generator, prof)
    system.close()
    result = compiled_regions_ran_verdict(run.compile_settings, run.compiled_calls)
    assert not result.passed and "generator.TransformerBlock" in result.message and "ran eagerly" in result.message
    assert "trainer.TransformerBlock" not in result.message.split("never ran")[0]


def test_a_generate_phase_made_five_times_slower_fails_the_ratio():
    prof = compiled(steps=3)
    run, system = run_with(faults.slow_generate, prof)
    system.close()
    result = check_generate_overhead(run, prof)
    assert not result.passed and result.metrics["ratio"] > prof.speed.generate_overhead, result.message
    assert "bare decode step" in result.message
