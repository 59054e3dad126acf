"""The pytest plugin (entry point `pytest11`): session wiring, markers, GPU pinning, xdist scheduling.

Under `pytest --pyargs titan_conformance` conftest and ini files inside the installed package are
ignored, so everything the suite needs lives here and in the modules it loads: its options
(`plugin_options.py`), the state its hooks share (`plugin_state.py`) and its fixtures
(`plugin_fixtures.py`, a plugin of its own through `pytest_plugins`). pytest loads this module in
every session of an environment that has the package installed, so importing it stays cheap, and it acts only in
the sessions that are its own: those that collect the titan_conformance suite or pass a `--tc-*`
option. Anyone else's session keeps its environment, its loggers and its reports untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from titan_conformance.errors import ConformanceError
from titan_conformance.gpus import pin_worker_gpus, share_cpu_threads, visible_gpus, worker_gpu_count
from titan_conformance.inputs import SuiteOptions
from titan_conformance.plugin_options import pytest_addoption, suite_options  # noqa: F401 -- pytest_addoption is a hook of this plugin
from titan_conformance.plugin_state import (
    CLEANUP, EXIT_STATUS, GPUS, GPUS_KEY, GROUPED, OPTIONS, PHASES_KEY, SESSION, SUITE_KEY, VARIANTS, WORKER_FLAG,
)
from titan_conformance.report.session import OPTIONS as REPORT_OPTIONS, ReportSession
from titan_conformance.report.write import clear_previous_report
from titan_conformance.worker_process import end_with_parent
from titan_conformance.vllm_support import vllm_version

PACKAGE_DIR = Path(__file__).resolve().parent
OPTION_PREFIX = "--tc-"
TRACE_LOGGER = "torch.__trace"

pytest_plugins = ("titan_conformance.plugin_fixtures",)


def _names_our_package(arg: str) -> bool:
    head = arg.split("::")[0]
    if head == "titan_conformance" or head.startswith("titan_conformance."):
        return True
    try:
        return Path(head).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def is_ours(config: pytest.Config) -> bool:
    """The session collects the titan_conformance suite or passes a --tc-* option."""
    if getattr(config, "workerinput", {}).get(WORKER_FLAG):
        return True
    given = [str(a) for a in config.invocation_params.args]
    return any(a.startswith(OPTION_PREFIX) for a in given) or any(_names_our_package(str(a)) for a in config.args)


def _group_variants_per_worker(config: pytest.Config) -> None:
    """Under xdist, every test of a variant goes to one worker (`pytest_xdist_make_scheduler`), so
    each variant's system is built once in the session; more workers run more variants at once.
    An explicit --dist is the user's."""
    given = [str(a) for a in config.invocation_params.args]
    explicit = any(a == "--dist" or a.startswith("--dist=") for a in given)
    if getattr(config.option, "dist", "no") == "load" and not explicit:
        config.stash[GROUPED] = True
        # A worker restarted after a crash hangs xdist's scope scheduler (pytest-xdist 3.8); the
        # crashed variant's tests are reported as failed either way, the other workers go on.
        if getattr(config.option, "maxworkerrestart", None) is None:
            config.option.maxworkerrestart = "0"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if not config.stash.get(GROUPED, False):
        return None
    from titan_conformance.variant_scheduling import VariantScheduling

    return VariantScheduling(config, log, [v.name for v in config.stash[VARIANTS]])


class _QuietTrace(logging.Filter):
    """pytest attaches its log capture to every non-propagating logger, torch's structured-trace
    logger included, whose records are empty DEBUG lines meant for TORCH_TRACE files: hundreds of
    them buried a failure's message. They pass only where a handler of torch's own is there."""

    def filter(self, record: logging.LogRecord) -> bool:
        return bool(os.environ.get("TORCH_TRACE")) or any(
            not type(h).__module__.startswith(("_pytest", "torch._logging")) for h in logging.getLogger(TRACE_LOGGER).handlers
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tc_gpus(n): the test needs n GPUs on its worker")
    config.addinivalue_line("markers", "tc_capability(name): the test needs the provider capability `name`")
    if not is_ours(config):
        return
    worker = getattr(config, "workerinput", None)
    if worker is None and not config.option.collectonly and (report_dir := config.getoption("--tc-report-dir")):
        clear_previous_report(Path(report_dir))  # before anything can fail: no stale green report stays
    try:
        options = suite_options(config)
    except ConformanceError as e:
        raise pytest.UsageError(str(e)) from None
    cleanup = config.stash[CLEANUP] = contextlib.ExitStack()
    if worker is not None:  # a worker process of our own session: its GPUs and its share of the cores
        end_with_parent()
        config.stash[GPUS] = pin_worker_gpus(worker["workerid"], worker["workercount"], options.device, worker.get(GPUS_KEY))
        if (restore := share_cpu_threads(worker["workercount"])) is not None:
            cleanup.callback(restore)
    else:
        config.stash[GPUS] = visible_gpus() if options.device != "cpu" else []
    trace, quiet = logging.getLogger(TRACE_LOGGER), _QuietTrace()
    trace.addFilter(quiet)
    cleanup.callback(trace.removeFilter, quiet)
    if worker is None:
        report_dir, phases = _controller_inputs(config, options)
        cleanup.callback(shutil.rmtree, phases, ignore_errors=True)
        _group_variants_per_worker(config)
    else:
        report_dir, phases = None, Path(worker[PHASES_KEY]) if worker.get(PHASES_KEY) else None
        from titan_conformance.inputs import suite_variants

        config.stash[VARIANTS] = suite_variants(options)  # the controller has checked them
    config.stash[OPTIONS] = options
    session_options = {name: getattr(options, name) for name in REPORT_OPTIONS}
    worker_id = worker["workerid"] if worker else "main"
    variants = [v.name for v in config.stash[VARIANTS]]
    session = config.stash[SESSION] = ReportSession(
        config, session_options, report_dir, phases, worker_id, options.timeout, variants,
    )
    config.pluginmanager.register(session, "titan_conformance.report")


def _controller_inputs(config: pytest.Config, options: SuiteOptions) -> tuple[Path, Path]:
    """Every input checked before anything runs (a usage error, printed once), the report folder and
    the workers' phase folder."""
    from titan_conformance.inputs import check_inputs
    from titan_conformance.report.write import default_report_dir

    try:
        name = Path(options.suite).name.removesuffix(".toml")
        report_dir = Path(options.report_dir) if options.report_dir else default_report_dir(name)
        if options.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConformanceError(
                    f"--tc-device cuda was asked for, but torch {torch.__version__} sees no CUDA device; run on a GPU "
                    "runner with a CUDA build of torch, or use --tc-device cpu."
                )
        gpus = len(config.stash[GPUS]) or None  # none visible: CPU ranks (gloo) for TP variants
        config.stash[VARIANTS] = check_inputs(options, report_dir, gpus)
    except ConformanceError as e:
        raise pytest.UsageError(str(e)) from None
    return report_dir, Path(tempfile.mkdtemp(prefix="tc-phases-"))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[EXIT_STATUS] = int(session.exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if (cleanup := config.stash.get(CLEANUP, None)) is not None:
        cleanup.close()
        from titan_conformance.leftovers import exit_if_stuck

        exit_if_stuck(config.stash.get(EXIT_STATUS, int(pytest.ExitCode.INTERNAL_ERROR)))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist, on the controller, per worker: the worker's session is ours, where it records its phases,
    the suite the controller resolved and the GPUs it found."""
    config = node.config
    if (session := config.stash.get(SESSION, None)) is not None:
        node.workerinput[WORKER_FLAG] = True
        node.workerinput[PHASES_KEY] = str(session.phases.folder)
        node.workerinput[SUITE_KEY] = config.stash[OPTIONS].suite
        node.workerinput[GPUS_KEY] = config.stash[GPUS]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every check that needs the system runs once per variant: test ids `[variant]`, a
    session-scoped parameter (pytest runs a variant's tests together and releases its system
    before building the next; under xdist one worker runs all of a variant's tests)."""
    if "tc_variant" not in metafunc.fixturenames or VARIANTS not in metafunc.config.stash:
        return
    metafunc.parametrize(
        "tc_variant",
        [pytest.param(v, id=v.name) for v in metafunc.config.stash[VARIANTS]],
        indirect=True, scope="session",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if OPTIONS not in item.config.stash:
        return
    if (marker := item.get_closest_marker("tc_gpus")) is not None:
        needed, have = marker.args[0], worker_gpu_count()
        if have < needed:
            pytest.skip(f"needs {needed} GPU(s); this worker holds {have}")


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """A suite check whose system raises fails with one paragraph naming where, not a traceback."""
    if OPTIONS not in pyfuncitem.config.stash or not pyfuncitem.module.__name__.startswith("titan_conformance.conformance."):
        return (yield)
    from titan_conformance.build import describe_failure

    try:
        return (yield)
    except Exception as e:  # pytest's outcomes (fail, skip) are BaseExceptions and pass through
        message = describe_failure(e, "The check raised (the system, or the check itself)", "It could not judge the property.")
    pytest.fail(message, pytrace=False)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if (options := config.stash.get(OPTIONS, None)) is None:
        return []
    variants = ", ".join(v.name for v in config.stash.get(VARIANTS, []))
    return [
        f"titan_conformance: suite={options.suite} variants={variants or '-'} system={options.system or 'reference'} "
        f"generator={options.generator} device={options.device} vllm={vllm_version() or 'not installed'}"
    ]


# --- fixtures: the system is built once, and a failed build is one failure ---------------------

