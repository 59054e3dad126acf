"""The TP launcher: a fresh gloo process group per call, results back to the caller, nothing left
behind, and a failing rank fails the call with its own traceback instead of hanging."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from pathlib import Path

import pytest

from titan_conformance.errors import ConformanceError
from titan_conformance.parallel.launch import LaunchTiming, RankError, run_ranks
from tp_probes import smoke
from titan_conformance.providers.reference import build_system
from titan_conformance.profile import load_profile

TP2_PROFILE = Path(__file__).resolve().parent.parent / "suites" / "tiny-cpu-tp2.toml"


def test_ranks_form_one_group_and_leave_nothing_behind():
    timing = LaunchTiming()
    results = run_ranks(smoke, 2, timing=timing)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" and r["sum"] == 3.0 for r in results)
    assert multiprocessing.active_children() == []
    assert timing.total < 60 and all({"start", "init", "fn", "destroy"} <= set(t) for t in timing.ranks)


def test_a_failing_rank_fails_the_call_with_its_traceback():
    start = time.perf_counter()
    with pytest.raises(RankError) as info:
        run_ranks(smoke, 2, (1,), timeout=120)
    assert "rank 1 raised RuntimeError: planted failure on rank 1" in str(info.value)
    assert "--- rank 1 ---" in str(info.value)  # the traceback of the rank that failed
    assert time.perf_counter() - start < 60  # the rank left waiting in the all-reduce was not awaited
    assert multiprocessing.active_children() == []


def test_tp_profile_is_built_only_inside_a_process_group_of_its_degree():
    profile = load_profile(str(TP2_PROFILE))
    assert profile.parallel.tp == 2 and profile.parallel.unwrap_async
    with pytest.raises(ConformanceError, match="process group of 2 ranks"):
        build_system(dataclasses.replace(profile, compile=dataclasses.replace(profile.compile, enable=False)))


@pytest.mark.parametrize("tied", [False, True])
def test_plan_matches_the_unsharded_model(tied):
    """Eager TP=2 logits vs the unsharded model; a tied lm_head (Qwen3-0.6B) keeps sharing the
    embedding's sharded weight."""
    from titan_conformance.model import ModelArgs
    from tp_probes import eager_plan_probe

    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, hidden_dim=128,
                     vocab_size=16, tie_word_embeddings=tied)
    for r in run_ranks(eager_plan_probe, 2, (args,)):
        assert r["logits_max_abs"] < 1e-5 and r["weights_round_trip"]
        assert r["lm_head_shares_embedding"] == tied
        # Dynamo's guards name a hook by its index in the plain dict's order (torch 2.11 failed
        # building guards when `prepend=True` had reordered the OrderedDict)
        assert r["hooks_in_dict_order"] and r["flatten_first"]


def test_adamw_foreach_takes_sharded_and_plain_parameters():
    """CUDA's default AdamW (foreach) over a TP model: DTensor and plain parameters in one foreach
    list raised `_foreach_lerp_ got mixed torch.Tensor and DTensor` on NCCL; forced here on gloo.
    Separate param groups give the per-tensor loop's update."""
    from titan_conformance.model import ModelArgs
    from tp_probes import optimizer_step_probe

    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, hidden_dim=128,
                     vocab_size=16, tie_word_embeddings=True)
    for r in run_ranks(optimizer_step_probe, 2, (args,)):
        assert r["foreach_error"] is None
        assert r["groups"] == 2 and r["max_abs"] < 1e-6
