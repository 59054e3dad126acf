"""A failed parity verdict names where trainer and generator part (`checks.localize`): each planted
fault names its own probe point, on the tiny profile compiled as in the run, with no compile added
by the probes; a clean system never probes; a system without the capability keeps today's hint."""

from __future__ import annotations

import math

import pytest
import torch

import faults
from titan_conformance.checks.invariance import check_prefill_decode
from titan_conformance.checks.localize import localized, point_divergence
from titan_conformance.checks.parity import SAME_MODEL_HINT, check_logprob_parity
from titan_conformance.checks.precision import check_precision_floor
from titan_conformance.checks.result import CheckResult
from titan_conformance.checks.weight_sync import check_weight_sync
from titan_conformance.profile import load_profile
from titan_conformance.protocol.probe_points import probe_points
from titan_conformance.providers.reference import build_system
from titan_conformance.run import perform_run


@pytest.fixture(scope="module")
def tiny():
    """The tiny profile's system, blocks compiled as in the run; each test undoes what it planted."""
    profile = load_profile("tiny-cpu")
    with build_system(profile) as system:
        yield system, profile


def compiles(system) -> int:
    return len(system.compile_ledger().events)


def named(result: CheckResult) -> str:
    assert not result.passed, result.message
    return result.metrics["localization"]["first_point"]


def test_a_clean_system_never_probes(tiny, monkeypatch):
    system, profile = tiny
    monkeypatch.setattr(system, "activations", lambda *a, **k: pytest.fail("a passing verdict probed the system"))
    run = perform_run(system, 1)
    results = [check_logprob_parity(run, profile), check_precision_floor(system, profile),
               check_prefill_decode(system, profile), check_weight_sync(system, profile)]
    for result in results:
        assert result.passed and "localization" not in result.metrics, (result.name, result.message)


def test_a_generator_rope_base_one_percent_off_names_q_after_rope_in_block_0_and_compiles_nothing(tiny):
    system, profile = tiny
    undo = faults.plant_rope_theta(system, 1.01)
    before = compiles(system)
    try:
        result = check_precision_floor(system, profile)
    finally:
        undo()
    assert named(result) == "blocks.0.q_rope"
    assert "First divergence at block 0, q after RoPE" in result.message and "look at the generator's RoPE" in result.message
    assert "everything before it within the floor" in result.message
    loc = result.metrics["localization"]
    assert list(loc["points"]) == probe_points(len(loc["per_block"]))
    assert all(loc["points"][name]["pair"] <= loc["factor"] for name in probe_points(4)[:4])  # embedding .. k_norm
    # The probes and everything the system runs after them compile nothing: hooks and stand-ins left
    # no guard behind.
    system.rollout(system.task.validation_set(4), seed=1)
    system.trainer_logprobs(system.rollout(system.task.validation_set(2), seed=2))
    assert compiles(system) == before


def test_a_generator_norm_eps_names_the_first_norm(tiny):
    system, profile = tiny
    undo = faults.plant_norm_eps(system)
    try:
        result = check_precision_floor(system, profile)
    finally:
        undo()
    assert named(result) == "blocks.0.attn_norm"
    assert "look at the generator's attention input norm (eps" in result.message


@pytest.mark.parametrize("plant, side, point", [
    (faults.plant_untempered_generator, "generator", "sampled_logprobs"),
    (faults.plant_untempered_trainer, "trainer", "logprobs"),
])
def test_untempered_logprobs_name_the_logprob_stage_of_their_side(tiny, plant, side, point):
    system, profile = tiny
    undo = plant(system)
    try:
        result = check_precision_floor(system, profile)
    finally:
        undo()
    assert named(result) == point
    loc = result.metrics["localization"]
    assert max(loc["per_block"]) <= loc["factor"]  # every block agrees: only the logprob stage parts
    assert f"the {side} is" in result.message and "temper" in result.message


def test_a_weight_sync_that_skips_the_last_block_names_that_blocks_first_point(tiny):
    system, profile = tiny
    undo = faults.plant_sync_skips_last_block(system)
    try:
        system.step()
        result = check_weight_sync(system, profile)
    finally:
        undo()
        system.sync_weights()
    last = len(result.metrics["localization"]["per_block"]) - 1
    assert named(result) == f"blocks.{last}.attn_norm"
    assert "whether this block's weights were synced" in result.message


def test_a_skipped_weight_sync_names_the_embedding(tiny, monkeypatch):
    system, profile = tiny
    monkeypatch.setattr(system, "sync_weights", lambda: None)
    system.step()
    before = compiles(system)
    result = check_weight_sync(system, profile)  # localized on a fresh rollout of a few rows: nothing compiles
    monkeypatch.undo()
    system.sync_weights()
    assert named(result) == "embedding" and compiles(system) == before
    assert "look at the generator's embedding table (weights not synced" in result.message


def test_localization_costs_little_and_lands_in_the_metrics(tiny):
    system, profile = tiny
    undo = faults.plant_rope_theta(system, 1.01)
    try:
        result = check_precision_floor(system, profile)
    finally:
        undo()
    loc = result.metrics["localization"]
    assert loc["sequences"] == 8 and 0 < loc["seconds"] < 5
    grounding = loc["replay"]  # the eager re-execution of each block reproduces the compiled one within the floor
    assert set(grounding) == {"trainer", "generator"} and max(max(v.values()) for v in grounding.values()) <= loc["factor"]


def test_a_system_without_the_capability_keeps_todays_hint(tiny):
    system, profile = tiny

    class Unprobed:
        capabilities = system.capabilities - {"activations"}

    failed = CheckResult("logprob_parity", False, f"differ. {SAME_MODEL_HINT}")
    assert localized(failed, Unprobed(), profile, SAME_MODEL_HINT).message == f"differ. {SAME_MODEL_HINT}"
    assert "localization" not in failed.metrics


def test_a_point_with_a_zero_floor_or_nan_on_one_side_diverges():
    exact = torch.tensor([1.0, 2.0])
    same = point_divergence("embedding", dict(trainer=exact, generator=exact, reference=exact, oracle=exact.double()),
                            torch.float32)
    assert same.pair == 0 and 0 < same.floor < 1e-6  # half an ulp of the oracle's magnitude, not 0
    moved = point_divergence("embedding", dict(trainer=exact, generator=exact + 1e-3, reference=exact, oracle=exact.double()),
                             torch.float32)
    assert moved.pair > 1e3
    nan = point_divergence("logits", dict(trainer=exact, generator=torch.tensor([1.0, math.nan]), reference=exact,
                                          oracle=exact.double()), torch.float32)
    assert nan.pair == math.inf and nan.non_finite == ("generator",)


def test_a_block_whose_compiled_output_is_not_its_eager_code_is_said():
    from titan_conformance.checks.localize import Localization, PointDivergence

    ratios = {name: 1.0 for name in probe_points(2)} | {"blocks.1.q_rope": 30.0}
    points = [PointDivergence(n, r, 1.0, r, 1e-7) for n, r in ratios.items()]
    grounded = Localization(points, 4.0, 8, 0.1, {"trainer": {0: 1.0, 1: 1.0}, "generator": {0: 1.0, 1: 2.0}})
    assert "look at the generator's RoPE" in grounded.paragraph() and "compiled" not in grounded.paragraph()
    ungrounded = Localization(points, 4.0, 8, 0.1, {"trainer": {0: 1.0, 1: 1.0}, "generator": {0: 1.0, 1: 50.0}})
    assert "how block 1 is compiled on the generator: its compiled output is 50x the floor" in ungrounded.paragraph()


def test_a_provider_whose_probe_lacks_points_keeps_the_verdict_and_says_why(tiny, monkeypatch):
    system, profile = tiny
    real = system.activations

    def without_rope(completions, side, dtype=None):
        acts = real(completions, side, dtype)
        acts.points.pop("blocks.0.q_rope")
        return acts

    monkeypatch.setattr(system, "activations", without_rope)
    failed = CheckResult("logprob_parity", False, f"differ. {SAME_MODEL_HINT}")
    message = localized(failed, system, profile, SAME_MODEL_HINT).message
    assert message.startswith(f"differ. {SAME_MODEL_HINT}") and "lack blocks.0.q_rope" in message


def test_a_decode_that_forgets_its_cache_names_the_sampled_logprobs_with_every_block_agreeing():
    """Decode steps that leave nothing in the KV cache: the generator's prefill (which the probes
    run) still computes the trainer's model at every point, and only the logprobs it reported while
    decoding part, so decode vs prefill names that stage, not a block."""
    profile = load_profile("tiny-cpu")
    with faults.stale_decode_cache(profile) as system:
        result = check_prefill_decode(system, profile)
    assert named(result) == "sampled_logprobs", result.message
    loc = result.metrics["localization"]
    assert max(loc["per_block"]) <= loc["factor"]
