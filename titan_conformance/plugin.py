"""The pytest plugin (entry point `pytest11`): options, markers, GPU pinning and shared fixtures.

Under `pytest --pyargs titan_conformance` conftest and ini files inside the installed package are
ignored, so everything the suite needs lives here. Importing this module must stay cheap: pytest
loads it in every session of an environment that has the package installed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import pytest

from titan_conformance.errors import ConformanceError
from titan_conformance.report.session import ReportSession, progress, record_check

GENERATORS = ("native", "vllm", "auto")
DEVICES = ("cpu", "cuda", "auto")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("titan_conformance", "titan_conformance: RL trainer/generator conformance")
    group.addoption("--tc-suite", default="tiny-cpu", help="profile name from suites/ or a path to a TOML file")
    group.addoption("--tc-model-path", default=None, help="HF checkpoint directory overriding the profile's model")
    group.addoption("--tc-generator", default="auto", choices=GENERATORS, help="generator backend")
    group.addoption("--tc-device", default="auto", choices=DEVICES, help="device to run on")
    group.addoption(
        "--tc-report-dir", default=None,
        help="where report.json, summary.md, report.html and junit.xml go (default ./reports/<timestamp>-<profile>/)",
    )
    group.addoption("--tc-system", default=None, help="system provider: module:factory or an entry-point name")


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


def pytest_configure(config: pytest.Config) -> None:
    # torch's structured-trace logger propagates empty DEBUG records into every captured-log report.
    logging.getLogger("torch.__trace").propagate = False
    config.addinivalue_line("markers", "tc_gpus(n): the test needs n GPUs on its worker")
    config.addinivalue_line("markers", "tc_capability(name): the test needs the provider capability `name`")
    _pin_worker_gpus(config)
    config.pluginmanager.register(ReportSession(config), "titan_conformance.report")
    if config.getoption("--tc-generator") == "vllm":
        raise pytest.UsageError(
            "--tc-generator vllm: this build of titan_conformance has no vLLM generator backend yet; "
            "use --tc-generator native (or auto)."
        )


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
    return [
        f"titan_conformance: suite={config.getoption('--tc-suite')} "
        f"system={config.getoption('--tc-system') or 'reference'} "
        f"generator={config.getoption('--tc-generator')} device={config.getoption('--tc-device')}"
    ]


def _fail(e: ConformanceError) -> None:
    pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def tc_profile(request: pytest.FixtureRequest):
    from titan_conformance.system.profile import load_profile

    try:
        return load_profile(request.config.getoption("--tc-suite"))
    except ConformanceError as e:
        _fail(e)


@pytest.fixture(scope="session")
def tc_system(request: pytest.FixtureRequest, tc_profile):
    """The system under test, built once per worker and shared by every check."""
    from titan_conformance.provider import load_factory

    opts = request.config
    try:
        factory = load_factory(opts.getoption("--tc-system"))
        system = factory(tc_profile, device=opts.getoption("--tc-device"), model_path=opts.getoption("--tc-model-path"))
    except ConformanceError as e:
        _fail(e)
    startup = ", ".join(f"{k}={v:.1f}s" for k, v in system.startup.items())
    progress(request.config, f"built {system.name} system ({startup})")
    yield system
    system.close()


@pytest.fixture(scope="session")
def tc_run(request: pytest.FixtureRequest, tc_system, tc_profile):
    """The GRPO run every check reads (the profile's run.steps steps)."""
    from titan_conformance.run import perform_run

    return perform_run(tc_system, tc_profile.run.steps, lambda m: progress(request.config, m))


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
