"""Tensor parallelism (profiles with parallel.tp > 1): the session's provider builds its system on
every rank of a process group of tp ranks (gloo on CPU, NCCL on CUDA) that this module spawns for
itself and tears down. Over that run: the recompile budget per region and rank (with the
AsyncCollectiveTensor-vs-Tensor check), trainer (TP) vs generator (TP) parity, TP vs TP=1 of the
same weights, and ranks that hold identical replicated results."""

import pytest

from titan_conformance.checks.tp import tp_parity_verdicts, tp_recompile_verdict
from titan_conformance.plugin_fixtures import assert_check


@pytest.fixture(scope="module")
def tp_results(tc_options, tc_variant, tc_profile):
    tp = tc_profile.parallel.tp
    if tp == 1:
        pytest.skip("the profile runs unsharded (parallel.tp = 1); TP checks need a profile with "
                    "parallel.tp > 1, e.g. --tc-suite tiny-cpu-tp2")
    from titan_conformance.gpus import resolve_device
    from titan_conformance.parallel.tp_run import run_tp

    device = resolve_device(tc_options.device).type  # a worker with too few GPUs skipped the variant
    return run_tp(tc_profile, tc_variant.system, tc_options.model_path, steps=tc_profile.run.steps, device=device)


def test_tp_recompiles_within_limit_on_every_rank(tp_results, tc_profile):
    assert_check(tp_recompile_verdict(tp_results, tc_profile))


@pytest.mark.parametrize("name", ["tp_trainer_vs_generator", "tp_vs_tp1", "tp_ranks_agree"])
def test_tp_parity(tp_results, tc_profile, name):
    verdicts = {v.name: v for v in tp_parity_verdicts(tp_results, tc_profile)}
    assert_check(verdicts.get(name) or next(iter(verdicts.values())))
