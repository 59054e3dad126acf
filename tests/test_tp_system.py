"""The GRPO system at TP=2 on 2 gloo ranks: per-rank recompile budget, trainer (TP) vs generator
(TP) parity, TP=2 vs TP=1 of the same weights, and ranks that agree bitwise. aot_eager (see
test_tp_recompiles.py for why); the profile itself compiles with Inductor."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from titan_conformance.checks.tp import tp_parity_verdicts, tp_recompile_verdict
from titan_conformance.parallel.tp_run import run_tp
from titan_conformance.profile import load_profile

TP2_PROFILE = Path(__file__).resolve().parent.parent / "suites" / "tiny-cpu-tp2.toml"


def tp2_profile(**compile_changes):
    profile = load_profile(str(TP2_PROFILE))
    return dataclasses.replace(profile, compile=dataclasses.replace(profile.compile, backend="aot_eager", **compile_changes))


@pytest.fixture(scope="module")
def tp_run():
    profile = tp2_profile()
    return profile, run_tp(profile, steps=2, timeout=300)


def test_recompile_budget_per_region_and_rank(tp_run):
    profile, results = tp_run
    result = tp_recompile_verdict(results, profile)
    assert result.passed, result.message
    counts = result.metrics["compiles_per_region"]
    for rank in (0, 1):
        assert counts[f"trainer.TransformerBlock[rank {rank}]"] == 1  # fwd+bwd; probes run the training forward
        assert counts[f"generator.TransformerBlock[rank {rank}]"] == 1  # prefill and decode: one flat row
    assert result.metrics["recommended_recompile_limit"]["trainer.TransformerBlock"] == 2


def test_parity_with_tp(tp_run):
    profile, results = tp_run
    verdicts = {v.name: v for v in tp_parity_verdicts(results, profile)}
    assert set(verdicts) == {"tp_trainer_vs_generator", "tp_vs_tp1", "tp_ranks_agree"}
    for v in verdicts.values():
        assert v.passed, v.message
    assert 0 < verdicts["tp_vs_tp1"].metrics["max_abs"] < 1e-5  # row-parallel sums: not bitwise


def test_a_rank_that_drifts_fails_the_agreement_check(tp_run):
    """Planted: rank 1's weights differ (as when a replicated weight's gradient is not reduced)."""
    profile, results = tp_run
    drifted = [results[0], dataclasses.replace(results[1], param_checksums={
        n: v + (1.0 if "q_norm" in n else 0.0) for n, v in results[1].param_checksums.items()
    })]
    verdict = {v.name: v for v in tp_parity_verdicts(drifted, profile)}["tp_ranks_agree"]
    assert not verdict.passed and "weights differ from rank 0's" in verdict.message
