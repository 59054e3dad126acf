"""The pytest plugin (entry point `pytest11`): options, markers, GPU pinning and shared fixtures.

Under `pytest --pyargs titan_conformance` conftest and ini files inside the installed package are
ignored, so everything the suite needs lives here. Importing this module must stay cheap: pytest
loads it in every session of an environment that has the package installed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from titan_conformance.errors import ConformanceError
from titan_conformance.report.session import ReportSession, progress, record_check
from titan_conformance.torchtitan_system import DEFAULT_SUITE as TORCHTITAN_DEFAULT_SUITE
from titan_conformance.vllm_support import INSTALL_HINT, vllm_version

GENERATORS = ("native", "vllm", "auto")
DEVICES = ("cpu", "cuda", "auto")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("titan_conformance", "titan_conformance: RL trainer/generator conformance")
    group.addoption(
        "--tc-suite", default=None,
        help="profile name from suites/ or a path to a TOML file (default: tiny-cpu; torchtitan-debugmodel "
        "with --tc-system torchtitan)",
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


def _visible_gpus() -> list[str]:
    """GPU ids this process may use, read without initializing CUDA."""
    if (env := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [d for d in env.split(",") if d.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def _pin_worker_gpus(config: pytest.Config) -> None:
    """Gives each xdist worker its own GPU(s) before anything initializes CUDA."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or config.getoption("--tc-device") == "cpu":
        return
    gpus = _visible_gpus()
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not gpus:
        return
    index = int(worker.removeprefix("gw"))
    per_worker = max(1, len(gpus) // count)
    start = (index * per_worker) % len(gpus)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[start : start + per_worker])


def share_cpu_threads() -> None:
    """Under xdist, each worker's torch takes its share of the cores: n workers each running as many
    threads as there are cores oversubscribe them, and small ops then spin and wait more than they
    compute (a generate step 5x its bare step on 2 contended cores)."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if os.environ.get("PYTEST_XDIST_WORKER") and count > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // count))


def pytest_configure(config: pytest.Config) -> None:
    # torch's structured-trace logger propagates empty DEBUG records into every captured-log report.
    logging.getLogger("torch.__trace").propagate = False
    config.addinivalue_line("markers", "tc_gpus(n): the test needs n GPUs on its worker")
    config.addinivalue_line("markers", "tc_capability(name): the test needs the provider capability `name`")
    _pin_worker_gpus(config)
    share_cpu_threads()
    config.pluginmanager.register(ReportSession(config), "titan_conformance.report")
    try:
        option = config.getoption("--tc-generator")
        if option == "auto" and config.getoption("--tc-system") in NATIVE_ONLY_SYSTEMS:
            config.stash[_BACKEND] = None
        else:
            config.stash[_BACKEND] = resolve_generator(option, vllm_version())
    except ConformanceError as e:
        raise pytest.UsageError(str(e)) from None


_BACKEND = pytest.StashKey[str]()
_CACHE_USE = pytest.StashKey["CompileCacheUse"]()
DEFAULT_SUITES = {"torchtitan": TORCHTITAN_DEFAULT_SUITE}
"""The suite a system runs when --tc-suite is not given (others: tiny-cpu)."""
NATIVE_ONLY_SYSTEMS = {"torchtitan"}
"""Systems without a vLLM backend: `--tc-generator auto` keeps their profile's generator."""


def selected_suite(config: pytest.Config) -> str:
    return config.getoption("--tc-suite") or DEFAULT_SUITES.get(config.getoption("--tc-system"), "tiny-cpu")


def resolve_generator(option: str, vllm: str | None) -> str | None:
    """--tc-generator -> the backend to force on the profile (None: keep the profile's).
    `auto` picks vLLM when it imports; `vllm` without it is a usage error."""
    if option == "vllm" and vllm is None:
        raise ConformanceError(f"--tc-generator vllm: vLLM does not import in this environment. {INSTALL_HINT}")
    if option == "auto":
        return "vllm" if vllm is not None else None
    return option


def _worker_gpu_count() -> int:
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None or shutil.which("nvidia-smi"):
        return len(_visible_gpus())
    return 0


def pytest_runtest_setup(item: pytest.Item) -> None:
    if (marker := item.get_closest_marker("tc_gpus")) is not None:
        needed, have = marker.args[0], _worker_gpu_count()
        if have < needed:
            pytest.skip(f"needs {needed} GPU(s); this worker holds {have}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    backend = config.stash.get(_BACKEND, None) or "profile's"
    version = vllm_version()
    return [
        f"titan_conformance: suite={selected_suite(config)} "
        f"system={config.getoption('--tc-system') or 'reference'} generator={backend} "
        f"device={config.getoption('--tc-device')} vllm={version or 'not installed'}"
    ]


def _fail(e: ConformanceError) -> None:
    pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def tc_profile(request: pytest.FixtureRequest):
    from titan_conformance.system.profile import load_profile

    try:
        profile = load_profile(selected_suite(request.config))
    except ConformanceError as e:
        _fail(e)
    if backend := request.config.stash.get(_BACKEND, None):
        profile = dataclasses.replace(profile, generator=dataclasses.replace(profile.generator, backend=backend))
    if (seed := request.config.getoption("--tc-seed")) is not None:
        profile = dataclasses.replace(profile, seed=seed)
    return profile


@pytest.fixture(scope="session")
def tc_system(request: pytest.FixtureRequest, tc_profile):
    """The system under test, built once per worker and shared by every check."""
    from titan_conformance.compilation.cache import restore_compile_cache, save_compile_cache
    from titan_conformance.provider import load_factory

    opts = request.config
    if tc_profile.parallel.tp > 1:
        pytest.skip(
            f"profile {tc_profile.name!r} runs at parallel.tp = {tc_profile.parallel.tp}: only the TP checks "
            "(test_tensor_parallel.py) spawn a process group for it so far; the single-process checks "
            "run on unsharded profiles"
        )
    cache_file = opts.getoption("--tc-compile-cache")
    try:
        factory = load_factory(opts.getoption("--tc-system"))
        cache_use = restore_compile_cache(Path(cache_file)) if cache_file else None
        system = factory(tc_profile, device=opts.getoption("--tc-device"), model_path=opts.getoption("--tc-model-path"))
    except ConformanceError as e:
        _fail(e)
    try:  # whatever happens from here on, the system's engines and process groups are released
        startup = ", ".join(f"{k}={v:.1f}s" for k, v in system.startup.items())
        progress(request.config, f"built {system.name} system ({startup})")
        if cache_use is not None:
            save_compile_cache(Path(cache_file), cache_use)
            opts.stash[_CACHE_USE] = cache_use
            progress(request.config, f"compile cache: restored {cache_use.restored_bytes} bytes, saved "
                     f"{cache_use.saved_bytes}" + (f"; {cache_use.problem}" if cache_use.problem else ""))
        yield system
    finally:
        system.close()


@pytest.fixture(scope="session")
def tc_run(request: pytest.FixtureRequest, tc_system, tc_profile):
    """The GRPO run every check reads (the profile's run.steps steps)."""
    from titan_conformance.run import perform_run

    run = perform_run(tc_system, tc_profile.run.steps, lambda m: progress(request.config, m))
    if (use := request.config.stash.get(_CACHE_USE, None)) is not None:
        run.compile_cache.update(restored_bytes=use.restored_bytes, saved_bytes=use.saved_bytes, problem=use.problem)
    return run


def require(system, capability: str) -> None:
    """Skips the calling check when the provider lacks `capability` (never a silent pass)."""
    if capability not in system.capabilities:
        from titan_conformance.provider import CAPABILITIES

        pytest.skip(f"system provider {system.name!r} lacks capability {capability!r}: {CAPABILITIES[capability]}")


def assert_check(result) -> None:
    """Fails with the check's message (no traceback); a str result is a reason to skip. The
    result goes into the report either way."""
    if isinstance(result, str):
        pytest.skip(result)
    record_check(result)
    if not result.passed:
        pytest.fail(result.message, pytrace=False)
