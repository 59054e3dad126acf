"""Generator determinism at production concurrency (`checks/determinism.py`): a clean generator passes
in tolerance and bitwise mode; a generator whose numerics follow the batch's rows, the batch size
(split-K) or a step counter FAILS, naming what differed and where to look; a verdict that compared
nothing, or saw NaN, fails."""

from __future__ import annotations

import dataclasses
import re

import faults
import pytest
from test_planted_faults import profile

from titan_conformance.checks.determinism import (
    Comparison,
    check_neighbour_invariance,
    check_repeat_determinism,
    determinism_verdict,
    other_batch_size,
)
from titan_conformance.protocol import Completion
from titan_conformance.providers.reference import build_system

CHECKS = (check_repeat_determinism, check_neighbour_invariance)


def batch_invariant(prof):
    """The profile with its generator declared batch-invariant (bitwise verdicts)."""
    return dataclasses.replace(prof, generator=dataclasses.replace(prof.generator, batch_invariant=True))


@pytest.fixture(scope="module")
def system():
    with build_system(profile(steps=1)) as built:
        yield built


@pytest.mark.parametrize("declared", [False, True], ids=["tolerance", "bitwise"])
def test_a_clean_generator_is_deterministic_among_any_neighbours(system, declared):
    prof = batch_invariant(profile(steps=1)) if declared else profile(steps=1)
    for check in CHECKS:
        result = check(system, prof)
        assert result.passed, result.message
        assert result.metrics["tokens"] >= prof.tolerances.min_tokens and result.metrics["max_abs"] == 0.0
    labels = set(result.metrics["comparisons"])
    assert labels == {"other neighbours", "reversed order", "a batch of 33 rows"}, labels


@pytest.mark.parametrize("plant", [faults.plant_rows_mixed, faults.plant_step_counter, faults.plant_split_k_by_batch])
def test_planted_faults_fail_the_check_that_sees_them(system, plant):
    """Rows mixed and a step counter fail at the shipped tolerance; split-K by batch size differs
    by fp32 rounding, so only a generator declared batch-invariant fails on it."""
    prof = profile(steps=1)
    undo = plant(system)
    try:
        results = {check.__name__: (check(system, prof), check(system, batch_invariant(prof))) for check in CHECKS}
    finally:
        undo()
    repeat, neighbours = results["check_repeat_determinism"], results["check_neighbour_invariance"]
    for result in neighbours[1:] if plant is faults.plant_split_k_by_batch else neighbours:
        assert not result.passed and "Where to look" in result.message, result.message
    if plant is faults.plant_split_k_by_batch:
        assert neighbours[0].passed and repeat[0].passed and repeat[1].passed  # same batch size: same split
        message = neighbours[1].message
        assert "a batch of 33 rows: logprobs differ by up to" in message and "split-K" in message, message
        assert neighbours[1].metrics["comparisons"]["other neighbours"]["max_abs"] == 0.0
    elif plant is faults.plant_rows_mixed:
        assert repeat[0].passed and repeat[1].passed  # the same batch gives the same mean
        assert "other neighbours: logprobs differ by up to" in neighbours[0].message
        assert re.search(r"at row \d+ of the first batch, row \d+ of the second, token \d+ \(", neighbours[0].message)
    else:
        for result in repeat:
            assert not result.passed and "repeat of batch 1: logprobs differ by up to" in result.message, result.message
            assert "step counter" in result.message


def completion(tokens, logprobs):
    return Completion([1, 2], tokens, logprobs, False)


def test_a_verdict_that_compared_nothing_or_saw_nan_fails():
    prof = profile(steps=1)
    empty = determinism_verdict("d", "probes", [Comparison("repeat", [completion([], [])], [completion([], [])], [(0, 0)])],
                                prof, "")
    assert not empty.passed and "repeat: no token was compared" in empty.message
    parted = [Comparison("order", [completion([5, 6], [-1.0, -2.0])], [completion([7, 6], [-1.5, -2.0])], [(0, 0)])]
    assert not determinism_verdict("d", "probes", parted, prof, "").passed  # parted at token 0: nothing compared
    nan = [Comparison("repeat", [completion([5] * 70, [-1.0] * 69 + [float("nan")])], [completion([5] * 70, [-1.0] * 70)],
                      [(0, 0)])]
    result = determinism_verdict("d", "probes", nan, prof, "")
    assert not result.passed and "NaN or inf logprobs (first at row 0 of the first batch, row 0 of the second, token 69" \
        in result.message, result.message
    few = determinism_verdict("d", "probes", [Comparison("order", [completion([5] * 5, [-1.0] * 5)],
                                                         [completion([5] * 5, [-1.0] * 5)], [(0, 0)])], prof, "")
    assert not few.passed and "only 5 tokens were compared in all" in few.message and "Where to look" not in few.message
    tie = [Comparison("order", [completion([5] * 70, [-1.0] * 70)], [completion([5] * 69 + [4], [-1.0] * 70)], [(0, 0)])]
    assert determinism_verdict("d", "probes", tie, prof, "").passed  # a near tie may part tokens within tolerance
    result = determinism_verdict("d", "probes", tie, batch_invariant(prof), "")
    assert not result.passed and "tokens part in 1 of 1 rows (first at row 0 of the first batch, row 0 of the second, " \
        "token 69: 5 vs 4)" in result.message, result.message


def test_the_smaller_batch_pads_to_another_capture_size():
    assert other_batch_size(128, [1, 2, 4, 8, 16, 32, 64, 128]) == 33  # pads to 64
    assert other_batch_size(40, [1, 2, 4, 8, 16, 32, 40]) == 17  # pads to 32
    assert other_batch_size(40, []) == 21  # no graphs: another batch size
    assert other_batch_size(2, [1, 2]) == 1
