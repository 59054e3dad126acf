"""top-p/top-k and which logprobs each side reports: a generator that reports processed logprobs
while the trainer scores raw ones (and the reverse), and a generator that truncates with a top-p
the profile does not declare, each FAIL parity with the log(kept mass) cause named; the profile's
top-p variant passes clean."""

from __future__ import annotations

from pathlib import Path

import faults
import pytest
from test_planted_faults import profile, run_with

from titan_conformance.checks.finite import check_run_finite
from titan_conformance.checks.parity import check_logprob_parity
from titan_conformance.checks.precision import check_precision_floor
from titan_conformance.checks.weight_sync import check_weight_sync
from titan_conformance.profile import load_profile
from titan_conformance.providers.reference import build_system

TOP_P = {"top_p": 0.95, "logprobs": "processed"}


def test_the_cpu_suites_top_p_variant_is_this_profile():
    suite = Path(__file__).resolve().parents[1] / "suites" / "tiny-cpu.toml"
    assert load_profile(str(suite), "topp").sampling.spec == profile(sampling=TOP_P).sampling.spec


@pytest.mark.parametrize("logprobs", ["processed", "raw"])
def test_a_top_p_run_passes_parity_the_precision_floor_and_weight_sync(logprobs):
    """Weight sync re-scores fixed completions after a step: under processed logprobs a token may
    leave the kept set, -inf on both sides, which is agreement."""
    prof = profile(steps=2, sampling=dict(TOP_P, logprobs=logprobs))
    run, system = run_with(build_system, prof)
    try:
        results = [check_logprob_parity(run, prof), check_run_finite(run), check_precision_floor(system, prof),
                   check_weight_sync(system, prof)]
    finally:
        system.close()
    for result in results:
        assert result.passed, result.message
    assert results[0].metrics["max_abs"] < 1e-5 and results[0].metrics["tokens"] >= 512


@pytest.mark.parametrize("fault, sampling, higher", [
    (faults.trainer_scores_raw, TOP_P, "generator"),  # generator processed, trainer raw
    (faults.generator_reports_raw, TOP_P, "trainer"),  # generator raw, trainer processed
    (faults.generator_truncates_top_p, {}, "generator"),  # the profile says top_p = 1
])
def test_a_logprob_semantics_mismatch_fails_parity_naming_top_p_and_the_logprobs_mode(fault, sampling, higher):
    prof = profile(steps=2, sampling=sampling)
    run, system = run_with(fault, prof)
    system.close()
    parity = check_logprob_parity(run, prof)
    assert not parity.passed
    # log(kept mass) of top_p 0.95: at most -log(0.95) = 0.051, far beyond fp32's tolerance
    assert 100 * prof.tolerance.max_abs < parity.metrics["max_abs"] < 0.052, parity.metrics
    message = parity.message
    assert f"Every differing token is higher on the {higher} side" in message, message
    assert "log(kept mass)" in message and "top-p/top-k" in message and "logprobs_mode" in message
    assert prof.sampling.spec.describe() in message  # what the profile declares


@pytest.mark.parametrize("fault", [
    faults.untempered_trainer, faults.untempered_generator_logprobs, faults.generator_rope_theta_one_percent_off,
    faults.generator_norm_eps,
])
def test_other_mismatches_are_not_called_a_top_p_one(fault):
    """Untempered logprobs or another model move the top tokens one way and the tail the other:
    not log(kept mass); the message keeps the general hint."""
    prof = profile(steps=2)
    run, system = run_with(fault, prof)
    system.close()
    parity = check_logprob_parity(run, prof)
    assert not parity.passed and "Every differing token" not in parity.message
    assert "sampling temperature" in parity.message
