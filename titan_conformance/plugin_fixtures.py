"""The suite's fixtures: the variant a test runs on, its system (built once per session: a failed
build is one failure) and the GRPO run every check reads; `require` and `assert_check` for checks."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest

from titan_conformance.errors import ConformanceError
from titan_conformance.gpus import gpu_sharing, resolve_device, worker_gpu_count
from titan_conformance.inputs import SuiteOptions
from titan_conformance.plugin_state import GPUS, OPTIONS, SESSION, VARIANTS
from titan_conformance.report.session import progress, record_check


@pytest.fixture(scope="session")
def _tc_unavailable(request: pytest.FixtureRequest) -> dict[str, str]:
    """Variant name -> why it cannot run on this worker (absent where it can)."""
    from titan_conformance.inputs import variant_unavailable

    gpus = worker_gpu_count() if resolve_device(request.config.stash[OPTIONS].device).type == "cuda" else None
    return {v.name: why for v in request.config.stash.get(VARIANTS, []) if (why := variant_unavailable(v, gpus))}


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
    if OPTIONS not in request.config.stash:
        pytest.skip("not a titan_conformance session")
    return request.config.stash[OPTIONS]


@pytest.fixture(scope="session")
def tc_gpu_sharing(request: pytest.FixtureRequest, _tc_unavailable) -> str | None:
    """Why this worker's GPU is shared with other workers running variants at the same time, or
    None where it holds its GPU(s) alone (absolute time budgets mean something only then)."""
    config = request.config
    if resolve_device(config.stash[OPTIONS].device).type != "cuda":
        return None
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    runnable = sum(v.name not in _tc_unavailable for v in config.stash[VARIANTS])
    return gpu_sharing(workers, runnable, len(config.stash[GPUS]))


@pytest.fixture(scope="session")
def _tc_build(request: pytest.FixtureRequest, tc_variant, tc_profile):
    """The session's Build: the system, or why there is none. Never raises for a failed build."""
    from titan_conformance.build import Build, build
    from titan_conformance.leftovers import snapshot
    from titan_conformance.compilation.cache import restore_compile_cache, save_compile_cache, variant_cache_path
    from titan_conformance.protocol import load_factory
    from titan_conformance.report.collect import failed_build_record
    from titan_conformance.report.session import RUN_KEY, add_pending

    config, options = request.config, request.config.stash[OPTIONS]
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
    before = snapshot()
    outcome = build(load_factory(system_spec), tc_profile, options.device, options.model_path, system_spec or "reference")
    if outcome.error:
        with contextlib.suppress(ConformanceError):
            record = failed_build_record(tc_profile, resolve_device(options.device), outcome.error)
            add_pending(RUN_KEY, {**record, "variant": tc_variant.name})
        progress(config, f"the system did not build: {outcome.error}")
        _end_leftovers(config, tc_variant.name, before)
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
                     f"{cache_use.saved_kernels} Triton kernels" + (f"; {cache_use.problem}" if cache_use.problem else "")
                     + (f"; {cache_use.unauthenticated}" if cache_use.unauthenticated else ""))
        yield outcome
    finally:
        try:
            system.close()
        finally:
            _end_leftovers(config, tc_variant.name, before)


def _end_leftovers(config: pytest.Config, variant: str, before) -> None:
    """Names in the report, and ends, what the variant's system left running once closed."""
    from titan_conformance.leftovers import end_leftovers
    from titan_conformance.report.session import LEFTOVER_KEY, add_pending

    left = end_leftovers(before)
    if left["threads"] or left["processes"]:
        add_pending(LEFTOVER_KEY, {"variant": variant, **left})
        progress(config, f"variant {variant}'s system left running after close: "
                 f"{'; '.join(left['threads'] + left['processes'])} (processes ended; see the report)")


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
    session = request.config.stash[SESSION]
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
