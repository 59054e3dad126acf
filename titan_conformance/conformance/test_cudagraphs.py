"""FULL CUDA-graph equivalence: the policy graphs the step's batch (max_num_seqs); the captured
sizes are the policy's, each captured once over the run; at every capture size (in a seeded
shuffled order, the largest included) a padded batch and then the full batch replay the graph for
several decode steps of prompts of different lengths, replay equals the compiled step exactly
(outputs and the keys/values written) and eager within tolerance, and no cache slot outside the
real rows' own and the scratch slot is written; no NaN/inf; the engine runs the mode the profile
asks for; and the run's decode steps replayed the graphs."""

import pytest

from titan_conformance.checks.cudagraphs import (
    capture_policy_verdict, capture_set_verdict, check_rollout_graph_equivalence, graph_replay_verdict,
)
from titan_conformance.checks.graph_probes import check_graph_equivalence
from titan_conformance.plugin_fixtures import assert_check, require


@pytest.fixture
def cuda_system(tc_run, tc_profile):
    if tc_run.system.device.type != "cuda":
        pytest.skip(f"CUDA graphs need a CUDA device; this run is on {tc_run.system.device}")
    if tc_profile.cudagraph.mode == "NONE":
        pytest.skip(f"profile {tc_profile.name!r} sets cudagraph.mode = NONE")
    require(tc_run.system, "cudagraphs")
    return tc_run.system


def test_capture_policy_includes_max_num_seqs(tc_system, tc_profile):
    """Runs on every device: the policy is checked whether or not this run captures graphs."""
    if tc_profile.cudagraph.mode == "NONE":
        pytest.skip(f"profile {tc_profile.name!r} sets cudagraph.mode = NONE")
    require(tc_system, "capture_policy")
    assert_check(capture_policy_verdict(tc_system.cudagraph_sizes().policy, tc_profile.max_num_seqs))


def test_captured_sizes_are_the_policys(cuda_system, tc_profile):
    assert_check(capture_set_verdict(cuda_system.cudagraph_sizes(), tc_profile.cudagraph.mode.value))


def test_replay_matches_eager_at_every_capture_size(cuda_system, tc_profile):
    """Decode steps from a fixed state where the generator runs them alone (logits, noise, sampler,
    the cache slots written: `graph_probes`); else whole rollouts with the engine's graphs and with
    them bypassed."""
    if "decode_probes" in cuda_system.capabilities:
        assert_check(check_graph_equivalence(cuda_system, tc_profile))
        return
    require(cuda_system, "graph_bypass")
    assert_check(check_rollout_graph_equivalence(cuda_system, tc_profile))


def test_decode_steps_replayed_graphs(cuda_system, tc_run):
    assert_check(graph_replay_verdict(tc_run.records, cuda_system.cudagraph_sizes().captured))
