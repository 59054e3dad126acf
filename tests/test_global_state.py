"""Every process-wide change a system makes (Dynamo's recompile limit, the recompiles log artifact
and its logger, log taps, environment variables, registries, phase listeners) is scoped: after
`close()` the process is as it was before the build."""

from __future__ import annotations

import dataclasses
import logging
import os

import pytest
import torch
from torch._logging._internal import log_state

from titan_conformance import timing
from titan_conformance.compilation import ledger
from titan_conformance.profile import load_profile
from titan_conformance.providers.reference import build_system
from titan_conformance.run import perform_run
from titan_conformance.vllm_support import vllm_version

ENV = ("VLLM_ENABLE_V1_MULTIPROCESSING", "CUDA_VISIBLE_DEVICES")


def process_state() -> dict:
    recompiles = logging.getLogger("torch._dynamo.guards.__recompiles")
    state = {
        "recompile_limit": torch._dynamo.config.recompile_limit,
        "artifacts": sorted(log_state.artifact_names),
        "recompiles logger": (recompiles.level, list(recompiles.filters)),
        "convert_frame filters": list(logging.getLogger("torch._dynamo.convert_frame").filters),
        "active ledgers": list(ledger._ACTIVE),
        "phase listeners": list(timing._LISTENERS),
        "environment": {k: os.environ.get(k) for k in ENV},
        "threads": torch.get_num_threads(),
    }
    if vllm_version() is not None:
        from titan_conformance.generator import vllm_model

        state["vLLM ledgers"] = dict(vllm_model.LEDGERS)
    return state


def profile(backend: str, **compile_changes):
    base = load_profile("tiny-cpu")
    return dataclasses.replace(
        base, run=dataclasses.replace(base.run, steps=1),
        compile=dataclasses.replace(base.compile, backend="aot_eager", recompile_limit=5, **compile_changes),
        generator=dataclasses.replace(base.generator, backend=backend),
    )


@pytest.mark.parametrize("backend", ["native", pytest.param("vllm", marks=pytest.mark.skipif(
    vllm_version() is None, reason="vLLM is not installed"))])
def test_the_process_after_close_is_as_before_the_build(backend):
    before = process_state()
    with build_system(profile(backend)) as system:
        perform_run(system, 1)
        during = process_state()
    assert during["recompile_limit"] == 5 and "recompiles" in during["artifacts"]  # the system did change them
    assert process_state() == before


def test_a_build_that_fails_leaves_nothing_behind():
    before = process_state()
    broken = profile("native")
    broken = dataclasses.replace(broken, model=dataclasses.replace(broken.model, checkpoint="/nonexistent"))
    with pytest.raises(Exception):
        build_system(broken)
    assert process_state() == before
