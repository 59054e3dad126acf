"""Generator determinism at production concurrency: the same max_num_seqs sequences rolled out twice,
and probe sequences among other neighbours, in another order and at another (padded) batch size."""

from titan_conformance.checks.determinism import check_neighbour_invariance, check_repeat_determinism
from titan_conformance.plugin_fixtures import assert_check, require


def test_generator_repeats_at_max_num_seqs(tc_run, tc_profile):
    require(tc_run.system, "grpo")
    assert_check(check_repeat_determinism(tc_run.system, tc_profile))


def test_generator_sequence_ignores_its_neighbours(tc_run, tc_profile):
    require(tc_run.system, "sequence_noise")
    assert_check(check_neighbour_invariance(tc_run.system, tc_profile))
