"""FULL CUDA-graph equivalence: at every capture size graph replay equals eager; padded batches
between sizes give the same real rows; no NaN/inf at any size."""

import pytest

from titan_conformance.plugin import require


@pytest.fixture
def cuda_system(tc_run):
    if tc_run.system.device.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA device; this run is on " + str(tc_run.system.device))
    require(tc_run.system, "cudagraphs")
    return tc_run.system


def test_replay_matches_eager_at_every_capture_size(cuda_system):
    pytest.skip("the reference provider does not capture CUDA graphs yet")


def test_padded_batches_between_sizes_match(cuda_system):
    pytest.skip("the reference provider does not capture CUDA graphs yet")
