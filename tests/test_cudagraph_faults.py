"""On a CUDA device: FULL-graph equivalence passes on the tiny profile and FAILS on each planted
fault (a size left out, padding rows leaking into real rows, a stale KV cache after capture, a
sampler that drops its noise, padded rows writing the KV cache at their own rows' slots, padding
rows keeping the slots a larger batch left in a shared buffer, a graph re-captured mid-run); the
run's decode steps replay the graphs, and a decode loop that never replays them fails."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import faults
from titan_conformance.checks.cudagraphs import capture_set_verdict
from titan_conformance.checks.graph_probes import check_graph_equivalence
from titan_conformance.providers.reference import build_system
from titan_conformance.profile import load_profile

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for CUDA graphs")


def cuda_profile():
    prof = load_profile("tiny-cpu")
    return dataclasses.replace(prof, cudagraph=dataclasses.replace(prof.cudagraph, mode="FULL"))


def build(factory):
    return factory(cuda_profile(), device="cuda")


def test_healthy_graphs_match_at_every_size():
    system = build(build_system)
    try:
        assert capture_set_verdict(system.cudagraph_sizes()).passed
        result = check_graph_equivalence(system, system.profile)
        assert result.passed, result.message
        assert len(result.metrics["per_size"]) > len(system.profile.capture_sizes)  # padded batches too
        assert set(result.metrics["captures"].values()) == {1}, result.metrics["captures"]
    finally:
        system.close()


@pytest.mark.parametrize(
    "fault, check, cause",
    [
        (faults.capture_size_left_out, lambda s: capture_set_verdict(s.cudagraph_sizes()), "missing ["),
        (faults.padding_leaks_into_real_rows, lambda s: check_graph_equivalence(s, s.profile), "padding leaks"),
        (faults.stale_kv_cache_after_capture, lambda s: check_graph_equivalence(s, s.profile), "replay differs from the same compiled step"),
        (faults.sampler_ignores_noise, lambda s: check_graph_equivalence(s, s.profile), "the captured sampler is wrong"),
        (faults.padding_in_real_pages, lambda s: check_graph_equivalence(s, s.profile), "the replay wrote 1 cache slot outside"),
        (faults.slots_left_by_previous_size, lambda s: check_graph_equivalence(s, s.profile), "outside its real rows' own"),
    ],
)
def test_planted_graph_faults_fail(fault, check, cause):
    system = build(fault)
    try:
        result = check(system)
    finally:
        system.close()
    assert not result.passed and cause in result.message, result.message


def run_steps(factory, steps: int = 2):
    from titan_conformance.run import perform_run

    system = build(factory)
    return perform_run(system, steps), system


def test_the_runs_decode_steps_replay_graphs_and_cost_about_a_replay():
    from titan_conformance.checks.cudagraphs import graph_replay_verdict
    from titan_conformance.checks.speed import check_generate_overhead

    run, system = run_steps(build_system)
    try:
        replays = graph_replay_verdict(run.records, system.cudagraph_sizes().captured)
        speed = check_generate_overhead(run, system.profile)
    finally:
        system.close()
    assert replays.passed and replays.metrics["graph_replays"] > 0, replays.message
    assert speed.passed, speed.message


def test_a_graph_recaptured_mid_run_fails_the_capture_set_and_the_probes():
    run, system = run_steps(faults.recaptured_mid_run)
    try:
        captured = capture_set_verdict(system.cudagraph_sizes())
        probes = check_graph_equivalence(system, system.profile)
    finally:
        system.close()
    for result in (captured, probes):
        assert not result.passed and "2 times" in result.message, result.message


def test_graphs_the_decode_loop_never_replays_fail_the_replay_check():
    from titan_conformance.checks.cudagraphs import graph_replay_verdict

    run, system = run_steps(faults.graphs_never_replayed)
    try:
        result = graph_replay_verdict(run.records, system.cudagraph_sizes().captured)
    finally:
        system.close()
    assert not result.passed and "ran without their captured FULL graph" in result.message, result.message
