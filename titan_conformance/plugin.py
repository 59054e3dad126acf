"""The pytest plugin (entry point `pytest11`): options, markers, GPU pinning and shared fixtures.

Under `pytest --pyargs titan_conformance` conftest and ini files inside the installed package are
ignored, so everything the suite needs lives here. pytest loads this module in every session of
an environment that has the package installed, so importing it stays cheap, and it acts only in
the sessions that are its own: those that collect the titan_conformance suite or pass a `--tc-*`
option. Anyone else's session keeps its environment, its loggers and its reports untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from titan_conformance.errors import ConformanceError
from titan_conformance.gpus import gpu_sharing, pin_worker_gpus, resolve_device, share_cpu_threads, visible_gpus, worker_gpu_count
from titan_conformance.inputs import DEVICES, GENERATORS, SuiteOptions
from titan_conformance.report.session import OPTIONS as REPORT_OPTIONS, ReportSession, progress, record_check
from titan_conformance.vllm_support import INSTALL_HINT, vllm_version

PACKAGE_DIR = Path(__file__).resolve().parent
OPTION_PREFIX = "--tc-"
WORKER_FLAG = "titan_conformance"
"""workerinput key: the controller's session is ours (so the worker's is too)."""
PHASES_KEY = "titan_conformance_phases"
"""workerinput key: the folder where workers record their phases."""
GPUS_KEY = "titan_conformance_gpus"
"""workerinput key: the GPUs the controller found, which the workers share out."""
SUITE_KEY = "titan_conformance_suite"
"""workerinput key: the suite the controller resolved (the GPU default is decided there, where
torch may look for CUDA; a worker must not before its GPUs are pinned)."""
FALLBACK_SUITE = "tiny-cpu"
"""The suite of a provider that names none (neither `default_suite` nor `default_gpu_suite`)."""
FALLBACK_GPU_SUITE = "qwen3-0.6b"
"""Where torch sees CUDA, the suite of a provider that names none: the GPU suite, as for ours."""
TRACE_LOGGER = "torch.__trace"

_OPTIONS = pytest.StashKey[SuiteOptions]()
_VARIANTS = pytest.StashKey[list]()
_GROUPED = pytest.StashKey[bool]()
_GPUS = pytest.StashKey[list]()
"""The GPUs the whole session may use (before a worker was pinned to its share)."""
_CLEANUP = pytest.StashKey[contextlib.ExitStack]()
_SESSION = pytest.StashKey[ReportSession]()


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
    return SuiteOptions(
        suite=config.getoption("--tc-suite") or _default_suite(config, load_factory(system), device),
        variants=tuple(n.strip() for arg in config.getoption("--tc-variant") for n in arg.split(",") if n.strip()),
        model_path=config.getoption("--tc-model-path"), generator=generator,
        device=device, system=system, seed=config.getoption("--tc-seed"),
        report_dir=config.getoption("--tc-report-dir"), compile_cache=config.getoption("--tc-compile-cache"),
        timeout=config.getoption("--tc-timeout"),
    )


def _group_variants_per_worker(config: pytest.Config) -> None:
    """Under xdist, every test of a variant goes to one worker (`pytest_xdist_make_scheduler`), so
    each variant's system is built once in the session; more workers run more variants at once.
    An explicit --dist is the user's."""
    given = [str(a) for a in config.invocation_params.args]
    explicit = any(a == "--dist" or a.startswith("--dist=") for a in given)
    if getattr(config.option, "dist", "no") == "load" and not explicit:
        config.stash[_GROUPED] = True
        # A worker restarted after a crash hangs xdist's scope scheduler (pytest-xdist 3.8); the
        # crashed variant's tests are reported as failed either way, the other workers go on.
        if getattr(config.option, "maxworkerrestart", None) is None:
            config.option.maxworkerrestart = "0"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if not config.stash.get(_GROUPED, False):
        return None
    from titan_conformance.variant_scheduling import VariantScheduling

    return VariantScheduling(config, log, [v.name for v in config.stash[_VARIANTS]])


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
    try:
        options = suite_options(config)
    except ConformanceError as e:
        raise pytest.UsageError(str(e)) from None
    worker = getattr(config, "workerinput", None)
    cleanup = config.stash[_CLEANUP] = contextlib.ExitStack()
    if worker is not None:  # a worker process of our own session: its GPUs and its share of the cores
        config.stash[_GPUS] = pin_worker_gpus(worker["workerid"], worker["workercount"], options.device, worker.get(GPUS_KEY))
        if (restore := share_cpu_threads(worker["workercount"])) is not None:
            cleanup.callback(restore)
    else:
        config.stash[_GPUS] = visible_gpus() if options.device != "cpu" else []
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

        config.stash[_VARIANTS] = suite_variants(options)  # the controller has checked them
    config.stash[_OPTIONS] = options
    session_options = {name: getattr(options, name) for name in REPORT_OPTIONS}
    worker_id = worker["workerid"] if worker else "main"
    variants = [v.name for v in config.stash[_VARIANTS]]
    session = config.stash[_SESSION] = ReportSession(
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
        config.stash[_VARIANTS] = check_inputs(options, report_dir)
    except ConformanceError as e:
        raise pytest.UsageError(str(e)) from None
    return report_dir, Path(tempfile.mkdtemp(prefix="tc-phases-"))


def pytest_unconfigure(config: pytest.Config) -> None:
    if (cleanup := config.stash.get(_CLEANUP, None)) is not None:
        cleanup.close()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist, on the controller, per worker: the worker's session is ours, where it records its phases,
    the suite the controller resolved and the GPUs it found."""
    config = node.config
    if (session := config.stash.get(_SESSION, None)) is not None:
        node.workerinput[WORKER_FLAG] = True
        node.workerinput[PHASES_KEY] = str(session.phases.folder)
        node.workerinput[SUITE_KEY] = config.stash[_OPTIONS].suite
        node.workerinput[GPUS_KEY] = config.stash[_GPUS]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every check that needs the system runs once per variant: test ids `[variant]`, a
    session-scoped parameter (pytest runs a variant's tests together and releases its system
    before building the next; under xdist one worker runs all of a variant's tests)."""
    if "tc_variant" not in metafunc.fixturenames or _VARIANTS not in metafunc.config.stash:
        return
    metafunc.parametrize(
        "tc_variant",
        [pytest.param(v, id=v.name) for v in metafunc.config.stash[_VARIANTS]],
        indirect=True, scope="session",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _OPTIONS not in item.config.stash:
        return
    if (marker := item.get_closest_marker("tc_gpus")) is not None:
        needed, have = marker.args[0], worker_gpu_count()
        if have < needed:
            pytest.skip(f"needs {needed} GPU(s); this worker holds {have}")


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """A suite check whose system raises fails with one paragraph naming where, not a traceback."""
    if _OPTIONS not in pyfuncitem.config.stash or not pyfuncitem.module.__name__.startswith("titan_conformance.conformance."):
        return (yield)
    from titan_conformance.build import describe_failure

    try:
        return (yield)
    except Exception as e:  # pytest's outcomes (fail, skip) are BaseExceptions and pass through
        message = describe_failure(e, "The check raised (the system, or the check itself)", "It could not judge the property.")
    pytest.fail(message, pytrace=False)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if (options := config.stash.get(_OPTIONS, None)) is None:
        return []
    variants = ", ".join(v.name for v in config.stash.get(_VARIANTS, []))
    return [
        f"titan_conformance: suite={options.suite} variants={variants or '-'} system={options.system or 'reference'} "
        f"generator={options.generator} device={options.device} vllm={vllm_version() or 'not installed'}"
    ]


# --- fixtures: the system is built once, and a failed build is one failure ---------------------


@pytest.fixture(scope="session")
def _tc_unavailable(request: pytest.FixtureRequest) -> dict[str, str]:
    """Variant name -> why it cannot run on this worker (absent where it can)."""
    from titan_conformance.inputs import variant_unavailable

    gpus = worker_gpu_count() if resolve_device(request.config.stash[_OPTIONS].device).type == "cuda" else None
    return {v.name: why for v in request.config.stash.get(_VARIANTS, []) if (why := variant_unavailable(v, gpus))}


@pytest.fixture(scope="session")
def tc_variant(request: pytest.FixtureRequest, _tc_unavailable):
    """The variant (`profile.Variant`) the test runs on; one that cannot run here skips, saying why."""
    if not hasattr(request, "param"):
        pytest.skip("not a titan_conformance session")
    if why := _tc_unavailable.get(request.param.name):
        pytest.skip(why)
    return request.param


@pytest.fixture(scope="session")
def tc_profile(tc_variant):
    return tc_variant.profile


@pytest.fixture(scope="session")
def tc_options(request: pytest.FixtureRequest) -> SuiteOptions:
    """The session's --tc-* options."""
    if _OPTIONS not in request.config.stash:
        pytest.skip("not a titan_conformance session")
    return request.config.stash[_OPTIONS]


@pytest.fixture(scope="session")
def tc_gpu_sharing(request: pytest.FixtureRequest, _tc_unavailable) -> str | None:
    """Why this worker's GPU is shared with other workers running variants at the same time, or
    None where it holds its GPU(s) alone (absolute time budgets mean something only then)."""
    config = request.config
    if resolve_device(config.stash[_OPTIONS].device).type != "cuda":
        return None
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    runnable = sum(v.name not in _tc_unavailable for v in config.stash[_VARIANTS])
    return gpu_sharing(workers, runnable, len(config.stash[_GPUS]))


@pytest.fixture(scope="session")
def _tc_build(request: pytest.FixtureRequest, tc_variant, tc_profile):
    """The session's Build: the system, or why there is none. Never raises for a failed build."""
    from titan_conformance.build import Build, build
    from titan_conformance.compilation.cache import restore_compile_cache, save_compile_cache, variant_cache_path
    from titan_conformance.protocol import load_factory
    from titan_conformance.report.collect import failed_build_record
    from titan_conformance.report.session import RUN_KEY, add_pending

    config, options = request.config, request.config.stash[_OPTIONS]
    if tc_profile.parallel.tp > 1:
        yield Build(skip=(
            f"profile {tc_profile.name!r} runs at parallel.tp = {tc_profile.parallel.tp}: only the TP checks "
            "(test_tensor_parallel.py) spawn a process group for it so far; the single-process checks run on "
            "unsharded profiles"
        ))
        return
    cache_file = variant_cache_path(Path(options.compile_cache), tc_variant.name) if options.compile_cache else None
    cache_use = restore_compile_cache(cache_file) if cache_file else None
    system_spec = tc_variant.system
    outcome = build(load_factory(system_spec), tc_profile, options.device, options.model_path, system_spec or "reference")
    if outcome.error:
        with contextlib.suppress(ConformanceError):
            record = failed_build_record(tc_profile, resolve_device(options.device), outcome.error)
            add_pending(RUN_KEY, {**record, "variant": tc_variant.name})
        progress(config, f"the system did not build: {outcome.error}")
        yield outcome
        return
    system = outcome.system
    try:  # whatever happens from here on, the system's engines and process groups are released
        startup = ", ".join(f"{k}={v:.1f}s" for k, v in system.startup.items())
        progress(config, f"built {system.name} system, variant {tc_variant.name} ({startup})")
        if cache_use is not None:
            save_compile_cache(cache_file, cache_use)
            outcome.cache_use = cache_use
            progress(config, f"compile cache: restored {cache_use.restored_bytes} bytes and "
                     f"{cache_use.restored_kernels} Triton kernels, saved {cache_use.saved_bytes} bytes and "
                     f"{cache_use.saved_kernels} Triton kernels" + (f"; {cache_use.problem}" if cache_use.problem else ""))
        yield outcome
    finally:
        system.close()


@pytest.fixture
def tc_system(_tc_build):
    """The system under test (built once per session); the first check of a failed build fails
    with its cause, every later one skips."""
    if _tc_build.skip:
        pytest.skip(_tc_build.skip)
    if _tc_build.error:
        if not _tc_build.reported:
            _tc_build.reported = True
            pytest.fail(f"The system did not build: {_tc_build.error}", pytrace=False)
        pytest.skip("the system did not build (the first check that needed it failed with the cause)")
    return _tc_build.system


@pytest.fixture(scope="session")
def _tc_run_result(request: pytest.FixtureRequest, _tc_build, tc_profile):
    """The GRPO run every check reads (the profile's run.steps steps); None without a system."""
    from titan_conformance.run import perform_run

    if _tc_build.system is None:
        return None
    session = request.config.stash[_SESSION]
    run = perform_run(_tc_build.system, tc_profile.run.steps, lambda m: progress(request.config, m), session.phases.record)
    if (use := getattr(_tc_build, "cache_use", None)) is not None:
        run.compile_cache.update(dataclasses.asdict(use))
    return run


@pytest.fixture
def tc_run(tc_system, _tc_run_result):
    return _tc_run_result


def require(system, capability: str) -> None:
    """Skips the calling check when the provider lacks `capability` (never a silent pass)."""
    if capability not in system.capabilities:
        from titan_conformance.protocol import CAPABILITIES

        why = (getattr(system, "unavailable", None) or {}).get(capability)
        pytest.skip(f"system provider {system.name!r} lacks capability {capability!r}: {CAPABILITIES[capability]}"
                    + (f" ({why})" if why else ""))


def assert_check(result) -> None:
    """Fails with the check's message (no traceback); a str result is a reason to skip. The
    result goes into the report either way."""
    if isinstance(result, str):
        pytest.skip(result)
    record_check(result)
    if not result.passed:
        pytest.fail(result.message, pytrace=False)
