"""Numerics faults a parity check must see, each FAILING its check with the cause named: a generator
1% off in RoPE base or with another norm eps (beyond the precision floor), logprobs untempered on
either side, NaN weights and NaN rewards (non-finite fails whatever the limits say), a verdict that
compared too few tokens."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import faults
from titan_conformance.checks.finite import check_run_finite
from titan_conformance.checks.invariance import check_batch_invariance, check_prefill_decode
from titan_conformance.checks.parity import check_logprob_parity, parity_verdict
from titan_conformance.checks.precision import check_precision_floor
from titan_conformance.checks.weight_sync import check_weight_sync
from titan_conformance.data_files import fixture_path
from titan_conformance.report.collect import run_record
from titan_conformance.providers.reference import build_system
from titan_conformance.profile import Tolerance
from test_planted_faults import profile, run_with


@pytest.fixture(scope="module")
def healthy_floor():
    prof = profile(steps=1)
    with build_system(prof) as system:
        yield check_precision_floor(system, prof)


def test_healthy_system_is_within_the_precision_floor(healthy_floor):
    assert healthy_floor.passed, healthy_floor.message
    m = healthy_floor.metrics
    assert m["tokens"] >= 512 and 0 < m["floor"]["mean_abs"] < 1e-5  # float32 vs float64 rounding
    assert max(m["generator_ratio"].values()) < 4 and max(m["trainer_ratio"].values()) < 4


@pytest.mark.parametrize("fault", [faults.generator_rope_theta_one_percent_off, faults.generator_norm_eps])
def test_the_precision_floor_catches_a_subtly_different_generator(fault):
    prof = profile(steps=1)
    with fault(prof) as system:
        result = check_precision_floor(system, prof)
    assert not result.passed and "the generator computes a slightly different model" in result.message, result.message
    assert result.metrics["generator_ratio"]["mean_abs"] > 20 and result.metrics["trainer_ratio"]["mean_abs"] < 4


@pytest.mark.parametrize("fault, side, stage", [(faults.untempered_generator_logprobs, "generator", "sampled_logprobs"),
                                               (faults.untempered_trainer, "trainer", "logprobs")])
def test_untempered_logprobs_fail_parity_and_the_floor_names_the_side(fault, side, stage):
    prof = profile(steps=2)
    assert prof.sampling.temperature != 1.0  # at temperature 1 dividing by it changes nothing
    run, system = run_with(fault, prof)
    try:
        parity, floor = check_logprob_parity(run, prof), check_precision_floor(system, prof)
    finally:
        system.close()
    assert not parity.passed and parity.metrics["max_abs"] > 0.1 and "temper" in parity.message
    assert parity.metrics["localization"]["first_point"] == stage and f"the {side} is" in parity.message
    assert not floor.passed and f"the {side} computes" in floor.message, floor.message


def nan_checkpoint(tmp_path):
    """The tiny fixture with one block's MLP weights NaN."""
    src, dst = fixture_path("tiny-qwen3"), tmp_path / "nan-ckpt"
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    tensors["model.layers.1.mlp.down_proj.weight"] = torch.full_like(tensors["model.layers.1.mlp.down_proj.weight"], float("nan"))
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_a_nan_checkpoint_fails_every_parity_check_and_keeps_the_run_data(tmp_path):
    prof = profile(steps=2)
    run, system = run_with(lambda p: build_system(p, model_path=str(nan_checkpoint(tmp_path))), prof)
    try:
        results = [check_logprob_parity(run, prof), check_run_finite(run), check_precision_floor(system, prof)]
        results += [check(system, prof) for check in (check_batch_invariance, check_prefill_decode, check_weight_sync)]
        record = run_record(run, prof)
    finally:
        system.close()
    for result in results:
        assert not result.passed, (result.name, result.message)
        assert "NaN" in result.message or "non-finite" in result.message.lower(), (result.name, result.message)
    assert "the first at step 1, completion 0, token 0 of the completion" in results[0].message
    assert "generator logprobs at step 1, completion 0" in results[1].message
    histogram = record["logprob_diff"]["histogram"]  # the report keeps the run, saying what it left out
    assert histogram["non_finite"] == record["logprob_diff"]["stats"]["tokens"] > 0
    json.dumps(record, allow_nan=False)


def test_a_nan_reward_fails_the_finite_check_naming_step_and_completion():
    prof = profile(steps=2)
    run, system = run_with(faults.nan_reward, prof)
    system.close()
    result = check_run_finite(run)
    assert not result.passed and "rewards at step 1, completion" in result.message, result.message
    assert "advantages at step 1" in result.message and "loss at step 1" in result.message


def test_a_verdict_that_compared_too_few_tokens_fails():
    result = parity_verdict("p", "trainer vs generator", torch.zeros(5), Tolerance(), False, min_tokens=64)
    assert not result.passed and "only 5 tokens were compared" in result.message
    # the few there are already differ: that is said first, the count after
    few = parity_verdict("p", "trainer vs generator", torch.full((5,), 2.0), Tolerance(), False, min_tokens=64)
    assert not few.passed and "differ beyond tolerance" in few.message and "only 5 tokens" in few.message
    assert few.limits["min_tokens"] == 64
    bitwise = parity_verdict("p", "trainer vs generator", torch.tensor([0.0, float("nan")]), Tolerance(), True)
    assert not bitwise.passed and "NaN or inf" in bitwise.message  # bitwise mode too
