"""The recompile ledger across TP ranks, and the planted faults of the TP recompile check.

One gloo process group of 2 ranks runs every scenario (each on a fresh sharded model, compiled as
a region of its own, so budgets never mix). Backend aot_eager: the recompiles under test are
Dynamo guard failures, identical for every backend, and AOTAutograd (where the TP backward
problems live) runs as under Inductor; Inductor's codegen would only add ~4x compile time here.
"""

from __future__ import annotations

import re

import pytest

from titan_conformance.checks.recompiles import recommended_limits, recompile_verdict
from titan_conformance.compilation import CompileConfig
from titan_conformance.model import ModelArgs
from titan_conformance.parallel.launch import run_ranks
from tp_probes import Scenario, scenario_rank_run

ARGS = ModelArgs(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=32, hidden_dim=128, vocab_size=16)
FORWARD = [(3, 5, False), (4, 9, False), (5, 7, False)]  # generator-like: no grad, varying shapes
TRAIN = [(3, 5, True), (4, 9, True), (5, 7, False)]  # trainer-like: fwd+bwd, then a no-grad forward


def config(**changes) -> CompileConfig:
    return CompileConfig(backend="aot_eager", **changes)


SCENARIOS = [
    Scenario("act_measured", config(recompile_limit=8), False, FORWARD),
    Scenario("unwrapped", config(recompile_limit=1), True, FORWARD),
    Scenario("act_fallback", config(recompile_limit=1, fullgraph=False), False, FORWARD),
    Scenario("act_fullgraph", config(recompile_limit=1, fullgraph=True), False, FORWARD),
    Scenario("train", config(recompile_limit=8), True, TRAIN),
]


@pytest.fixture(scope="module")
def runs():
    per_rank = run_ranks(scenario_rank_run, 2, (ARGS, SCENARIOS), timeout=300)
    return {sc.name: [per_rank[r][i] for r in range(2)] for i, sc in enumerate(SCENARIOS)}


def verdict(results, limit):
    errors = "; ".join(f"rank {r.rank}: {r.error}" for r in results if r.error) or None
    return recompile_verdict([e for r in results for e in r.events], [h for r in results for h in r.limit_hits], limit, errors)


def test_ledger_counts_each_rank_and_names_the_act_guard(runs):
    """Layer 0 gets the embedding's AsyncCollectiveTensor, layers 1.. a Tensor: 2 graphs per rank."""
    results = runs["act_measured"]
    events = [e for r in results for e in r.events]
    counts = {}
    for e in events:
        counts[e.key] = counts.get(e.key, 0) + 1
    assert counts == {"act_measured.TransformerBlock[rank 0]": 2, "act_measured.TransformerBlock[rank 1]": 2}
    for e in (e for e in events if e.index == 1):  # verbatim, as Dynamo words it (the id varies)
        assert re.fullmatch(
            r"\d+/0: ___check_type_id\(x, \d+\), "
            r"type=<class 'torch\.distributed\._functional_collectives\.AsyncCollectiveTensor'>",
            e.reason,
        ), e.reason


def test_block_fed_act_and_tensor_fails_the_check_with_that_reason(runs):
    """Held to the count it has without the alternation (1), the ACT run fails, naming the input,
    the type, and the unwrap option."""
    result = verdict(runs["act_measured"], limit=1)
    assert not result.passed
    assert "compiled 2 times > recompile_limit=1" in result.message
    assert "___check_type_id(x, <id>), type=<class 'torch.distributed._functional_collectives.AsyncCollectiveTensor'>" in result.message
    assert "Input 'x' of the compiled block alternates between AsyncCollectiveTensor" in result.message
    assert "parallel.unwrap_async = true" in result.message


def test_the_alternation_fails_even_within_the_limit(runs):
    """2 graphs per rank under recompile_limit=8 is no pass when the second is for the other tensor
    type: a region that compiles once (the generator's) doubled stays under any useful limit."""
    result = verdict(runs["act_measured"], limit=8)
    assert not result.passed
    assert "recompiled for another tensor type of the same input" in result.message
    assert "parallel.unwrap_async = true" in result.message


def test_with_the_unwrap_option_it_passes_at_one_graph_per_rank(runs):
    result = verdict(runs["unwrapped"], limit=1)
    assert result.passed, result.message
    assert result.metrics["compiles_per_region"] == {
        "unwrapped.TransformerBlock[rank 0]": 1, "unwrapped.TransformerBlock[rank 1]": 1,
    }


def test_limit_hit_by_the_alternation_fails_eager_fallback_and_fullgraph(runs):
    fallback = verdict(runs["act_fallback"], limit=1)
    assert not fallback.passed and all(r.error is None for r in runs["act_fallback"])  # ran on, eagerly
    assert "act_fallback.TransformerBlock: hit recompile_limit=1 (last reason: ___check_type_id(x, <id>)" in fallback.message
    assert "parallel.unwrap_async = true" in fallback.message
    hard = verdict(runs["act_fullgraph"], limit=1)
    assert not hard.passed and all("FailOnRecompileLimitHit" in r.error for r in runs["act_fullgraph"])
    assert "parallel.unwrap_async = true" in hard.message


def test_limit_below_the_observed_count_fails_with_the_ledger(runs):
    """fwd+bwd with dynamic shapes compiles once; the no-grad call once more (grad mode guard)."""
    results = runs["train"]
    assert all(r.error is None for r in results), [r.error for r in results]
    events = [e for r in results for e in r.events]
    assert recommended_limits(events) == {"train.TransformerBlock": 3}
    assert verdict(results, limit=2).passed
    result = verdict(results, limit=1)
    assert not result.passed
    assert "train.TransformerBlock[rank 1] compiled 2 times > recompile_limit=1" in result.message
    assert "GLOBAL_STATE changed: grad_mode" in result.message
    assert "region " in result.message and "reason: first compilation" in result.message  # the ledger
    assert result.metrics["observed_max"] == {"train.TransformerBlock": 2}


def test_a_run_that_failed_early_fails_the_tp_budget_check():
    """A system that died in its first compile made no recompiles; that is no pass (the NCCL suite
    reported one when a Dynamo error stopped both ranks' builds)."""
    import dataclasses
    from pathlib import Path

    from titan_conformance.checks.tp import tp_recompile_verdict
    from titan_conformance.protocol import RankReport as RankResult
    from titan_conformance.profile import load_profile

    profile = load_profile(str(Path(__file__).resolve().parent.parent / "suites" / "tiny-cpu-tp2.toml"))
    failed = [RankResult(r, error="building the system failed: InternalTorchDynamoError: boom") for r in (0, 1)]
    result = tp_recompile_verdict(failed, profile)
    assert not result.passed and "failed before it finished" in result.message
    assert tp_recompile_verdict([dataclasses.replace(r, error=None) for r in failed], profile).passed
