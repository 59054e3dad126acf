"""The torchtitan provider at parallel.tp = 2 on gloo: both roles sharded by torchtitan's own TP plan
for Qwen3 (its parallelize over the sharding configs of its update_from_config), each rank's system
built through the provider protocol, the same TP checks the suite runs. Clean, it passes with
per-rank compile counts under the variant's caps; it fails with the unwrap off (block 0's DTensor
holds an AsyncCollectiveTensor) and with a generator whose plan drops the attention all-reduce."""

from __future__ import annotations

import dataclasses

import pytest

from titan_conformance.checks.tp import tp_parity_verdicts, tp_recompile_verdict
from titan_conformance.errors import ConformanceError
from titan_conformance.parallel.tp_run import run_tp
from titan_conformance.profile import load_profile

pytest.importorskip("torchtitan", reason="the torchtitan provider needs torchtitan (make install-torchtitan)")


def tp2_profile(**parallel):
    profile = load_profile("torchtitan-debugmodel", "tp2")
    return dataclasses.replace(profile, parallel=dataclasses.replace(profile.parallel, **parallel))


def compiles(results, role: str) -> list[int]:
    return [sum(e.region.startswith(f"{role}.") for e in r.events) for r in results]


@pytest.fixture(scope="module")
def clean():
    profile = tp2_profile()
    return profile, run_tp(profile, "torchtitan", steps=2, timeout=600)


def test_sharded_by_torchtitans_plan_and_within_the_recompile_budget(clean):
    profile, results = clean
    assert [r.error for r in results] == [None, None]
    verdict = tp_recompile_verdict(results, profile)
    assert verdict.passed, verdict.message
    assert compiles(results, "trainer") == [1, 1] and compiles(results, "generator") == [2, 2]
    assert all(r.describe["tensor_parallel"] == "torchtitan parallelize_qwen3, 2 ranks, DTensor" for r in results)


def test_trainer_generator_and_tp1_agree(clean):
    profile, results = clean
    verdicts = {v.name: v for v in tp_parity_verdicts(results, profile)}
    assert all(v.passed for v in verdicts.values()), {n: v.message for n, v in verdicts.items()}
    assert 0 < verdicts["tp_vs_tp1"].metrics["max_abs"] < 1e-5  # row-parallel sums: close, not bitwise


def test_without_the_unwrap_the_recompile_check_fails():
    profile = tp2_profile(unwrap_async=False)
    results = run_tp(profile, "torchtitan", steps=1, timeout=600)
    verdict = tp_recompile_verdict(results, profile)
    assert not verdict.passed
    assert "AsyncCollectiveTensor" in verdict.message


def test_a_generator_without_the_attention_all_reduce_fails_parity():
    profile = tp2_profile()
    results = run_tp(profile, "faults:torchtitan_generator_without_attention_all_reduce", steps=1, timeout=600)
    verdicts = {v.name: v for v in tp_parity_verdicts(results, profile)}
    assert not verdicts["tp_trainer_vs_generator"].passed
    assert verdicts["tp_vs_tp1"].passed  # the trainer kept the plan


def test_a_fused_qkv_flavor_is_refused_at_tp2():
    from titan_conformance.providers.torchtitan.compat import load_torchtitan
    from titan_conformance.providers.torchtitan.models import attach_tp_plan, flavor_spec

    api = load_torchtitan()
    with pytest.raises(ConformanceError, match="debugmodel_non_fused_qkv"):
        attach_tp_plan(api, flavor_spec(api, "debugmodel", 24), 2)
