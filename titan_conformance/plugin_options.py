"""The suite's `--tc-*` options, and how a session's options resolve into `SuiteOptions` (with the
provider's own default suites)."""

from __future__ import annotations

import pytest

from titan_conformance.errors import ConformanceError
from titan_conformance.inputs import DEVICES, GENERATORS, SuiteOptions
from titan_conformance.plugin_state import SUITE_KEY
from titan_conformance.profile.loading import MAX_SEED
from titan_conformance.vllm_support import INSTALL_HINT, vllm_version

FALLBACK_SUITE = "tiny-cpu"
"""The suite of a provider that names none (neither `default_suite` nor `default_gpu_suite`)."""
FALLBACK_GPU_SUITE = "qwen3-0.6b"
"""Where torch sees CUDA, the suite of a provider that names none: the GPU suite, as for ours."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("titan_conformance", "titan_conformance: RL trainer/generator conformance")
    group.addoption(
        "--tc-suite", default=None,
        help="profile name from suites/ or a path to a TOML file (default: tiny-cpu; torchtitan-debugmodel "
        "with --tc-system torchtitan)",
    )
    group.addoption(
        "--tc-variant", action="append", default=[], metavar="NAME[,NAME]",
        help="run only these variants of the suite (`base` is the profile itself); default: all",
    )
    group.addoption("--tc-model-path", default=None, help="HF checkpoint directory overriding the profile's model")
    group.addoption(
        "--tc-compile-cache", default=None, metavar="FILE",
        help="torch.compile artifacts kept between runs: loaded before the system compiles (when the file "
        "exists), rewritten after startup. Keep FILE between CI jobs to start warm",
    )
    group.addoption(
        "--tc-generator", default="auto", choices=GENERATORS,
        help="generator backend (auto: vLLM when it imports, except for systems without a vLLM backend)",
    )
    group.addoption("--tc-device", default="auto", choices=DEVICES, help="device to run on")
    group.addoption(
        "--tc-report-dir", default=None,
        help="where report.json, summary.md, report.html and junit.xml go (default ./reports/<timestamp>-<profile>/)",
    )
    group.addoption("--tc-system", default=None, help="system provider: module:factory or an entry-point name")
    group.addoption(
        "--tc-seed", default=None, type=int,
        help="overrides the profile's seed (random init, warm-up, prompt draws, sampling): run a few to see spread",
    )
    group.addoption(
        "--tc-timeout", default=None, type=float, metavar="SECONDS",
        help="stop the session after SECONDS with a partial report that says where it stopped",
    )



def resolve_generator(option: str, vllm: str | None) -> str | None:
    """--tc-generator -> the backend to force on the profile (None: keep the profile's).
    `auto` picks vLLM when it imports; `vllm` without it is a usage error."""
    if option == "vllm" and vllm is None:
        raise ConformanceError(f"--tc-generator vllm: vLLM does not import in this environment. {INSTALL_HINT}")
    if option == "auto":
        return "vllm" if vllm is not None else None
    return option


def _default_suite(config: pytest.Config, factory, device: str) -> str:
    """The provider's suite for this machine: its `default_gpu_suite` where torch sees CUDA (and
    --tc-device allows it), else its `default_suite`. A provider that names neither (one wrapping
    ours, say) runs our suites; one that names only `default_suite` runs it everywhere. A worker
    takes what its controller decided."""
    if (decided := getattr(config, "workerinput", {}).get(SUITE_KEY)) is not None:
        return decided
    cpu_suite = getattr(factory, "default_suite", None)
    gpu_suite = getattr(factory, "default_gpu_suite", None if cpu_suite else FALLBACK_GPU_SUITE)
    cpu_suite = cpu_suite or FALLBACK_SUITE
    if gpu_suite is None or device == "cpu":
        return cpu_suite
    import torch

    return gpu_suite if torch.cuda.is_available() else cpu_suite


def suite_options(config: pytest.Config) -> SuiteOptions:
    """The options, with the provider's own defaults: its factory's `default_suite` and
    `default_gpu_suite` (the suites it runs without --tc-suite). The plugin learns of providers
    through their factories alone."""
    from titan_conformance.protocol import load_factory

    system = config.getoption("--tc-system")
    generator = config.getoption("--tc-generator")
    resolve_generator(generator, vllm_version())  # `vllm` without vLLM: a usage error
    device = config.getoption("--tc-device")
    given = config.getoption("--tc-variant")
    variants = tuple(n.strip() for arg in given for n in arg.split(",") if n.strip())
    if given and not variants:
        raise ConformanceError(
            f"--tc-variant {' '.join(map(repr, given))} names no variant; name one or more (e.g. --tc-variant base,fp32), "
            "or leave the option out to run them all."
        )
    seed = config.getoption("--tc-seed")
    if seed is not None and not 0 <= seed < MAX_SEED:
        raise ConformanceError(f"--tc-seed {seed}: give a whole number from 0 to {MAX_SEED - 1}.")
    return SuiteOptions(
        suite=config.getoption("--tc-suite") or _default_suite(config, load_factory(system), device),
        variants=variants, model_path=config.getoption("--tc-model-path"), generator=generator,
        device=device, system=system, seed=seed,
        report_dir=config.getoption("--tc-report-dir"), compile_cache=config.getoption("--tc-compile-cache"),
        timeout=config.getoption("--tc-timeout"),
    )

