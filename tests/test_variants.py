"""Suites as a base profile plus variants: loading, selection, the GPU default, GPU sharing."""

from types import SimpleNamespace

import pytest

from titan_conformance import plugin_options as plugin
from titan_conformance.errors import ConformanceError
from titan_conformance.gpus import gpu_sharing
from titan_conformance.inputs import SuiteOptions, suite_variants, variant_unavailable
from titan_conformance.profile import load_profile


def test_the_gpu_suite_declares_its_variants():
    variants = {v.name: v for v in suite_variants(SuiteOptions(suite="qwen3-0.6b", generator="native"))}
    assert list(variants) == ["base", "fp32", "topp", "vllm", "torchtitan", "tp2"]
    assert variants["fp32"].profile.model.dtype == "float32" and variants["fp32"].profile.budgets["h200"].train == 0.4
    assert variants["base"].profile.budgets["h200"].train == 0.2  # a variant's budgets do not leak into the base
    assert variants["torchtitan"].system == "torchtitan" and variants["torchtitan"].profile.name == "qwen3-0.6b[torchtitan]"
    assert variants["tp2"].profile.parallel.tp == 2
    # --tc-generator native forces every variant; auto keeps the declared vLLM variant apart
    assert {v.profile.generator.backend for v in variants.values()} == {"native"}
    auto = {v.name: v.profile.generator.backend for v in suite_variants(SuiteOptions(suite="qwen3-0.6b"))}
    assert auto["base"] == "native" and auto["vllm"] == "vllm"


def test_selection_and_bad_variants_are_named(tmp_path):
    picked = suite_variants(SuiteOptions(suite="qwen3-0.6b", variants=("fp32",)))
    assert [v.name for v in picked] == ["fp32"]
    with pytest.raises(ConformanceError, match="--tc-variant nope: suite 'qwen3-0.6b' has no such variant; it has base, fp32"):
        suite_variants(SuiteOptions(suite="qwen3-0.6b", variants=("nope",)))
    bad = tmp_path / "bad.toml"
    for table, fragment in [("[variants.x]\nsystem = 1\n", "'variants.x.system' must be a string"),
                            ("[variants.x]\nbase = 'no-such'\n", "No profile 'no-such'"),
                            ("[variants.base]\nseed = 1\n", "cannot be named `base`"),
                            ("[variants.x.model]\ndtype = 'float8'\n", "'variants.x.model.dtype' must be one of")]:
        bad.write_text(table)
        with pytest.raises(ConformanceError, match=None) as e:
            load_profile(str(bad))
        assert fragment in str(e.value), e.value


def test_a_variant_that_cannot_run_here_says_why(monkeypatch):
    variants = {v.name: v for v in suite_variants(SuiteOptions(suite="qwen3-0.6b"))}
    assert "needs 2 GPU(s) (parallel.tp = 2); this worker holds 1" in variant_unavailable(variants["tp2"], 1)
    assert variant_unavailable(variants["tp2"], None) is None  # gloo on a CPU
    monkeypatch.setattr("titan_conformance.vllm_support.vllm_version", lambda: None)
    assert "runs the vLLM generator, which does not import here" in variant_unavailable(variants["vllm"], 1)
    assert variant_unavailable(variants["base"], 1) is None


def test_the_default_suite_follows_the_machine(monkeypatch):
    import torch

    factory = SimpleNamespace(default_suite="tiny-cpu", default_gpu_suite="qwen3-0.6b")
    config = SimpleNamespace()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert plugin._default_suite(config, factory, "auto") == "qwen3-0.6b"
    assert plugin._default_suite(config, factory, "cpu") == "tiny-cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert plugin._default_suite(config, factory, "auto") == "tiny-cpu"
    worker = SimpleNamespace(workerinput={plugin.SUITE_KEY: "qwen3-0.6b"})  # decided by the controller
    assert plugin._default_suite(worker, factory, "auto") == "qwen3-0.6b"


def test_a_provider_that_names_no_suite_runs_ours_on_each_machine(monkeypatch):
    """A provider wrapping ours (a planted fault, a team's patched stack) without copying the
    attributes must get the GPU suite on a GPU runner, not the CPU suite on CUDA."""
    import torch

    config, bare, cpu_only = SimpleNamespace(), SimpleNamespace(), SimpleNamespace(default_suite="tiny-cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert plugin._default_suite(config, bare, "auto") == "qwen3-0.6b"
    assert plugin._default_suite(config, bare, "cpu") == "tiny-cpu"
    assert plugin._default_suite(config, cpu_only, "auto") == "tiny-cpu"  # its own choice, everywhere
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert plugin._default_suite(config, bare, "auto") == "tiny-cpu"


def test_budgets_are_judged_only_where_a_worker_holds_its_gpu_alone():
    assert gpu_sharing(workers=4, runnable_variants=2, gpus=1).startswith("2 workers run variants at once on 1 GPU")
    assert gpu_sharing(workers=4, runnable_variants=1, gpus=1) is None  # one variant: one busy worker
    assert gpu_sharing(workers=2, runnable_variants=2, gpus=2) is None
    assert gpu_sharing(workers=1, runnable_variants=5, gpus=1) is None
