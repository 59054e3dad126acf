"""A pytest plugin for `session_phases.py`: every process of the session (controller and xdist
workers) appends when it reached each point of its life to the JSON-lines file in
$TC_PROBE_FILE. Loaded with `-p session_probe` (benchmarks/ on PYTHONPATH)."""

from __future__ import annotations

import atexit
import json
import os
import time

import pytest

_FILE = os.environ.get("TC_PROBE_FILE")
_WHO = os.environ.get("PYTEST_XDIST_WORKER", "controller")


def _process_start() -> float:
    """When the kernel started this process (epoch seconds): the interpreter's own start-up and
    pytest's imports come before any plugin runs."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _mark(point: str, at: float | None = None) -> None:
    if _FILE:
        with open(_FILE, "a") as f:
            f.write(json.dumps({"who": _WHO, "point": point, "t": time.time() if at is None else at}) + "\n")


_mark("process_start", _process_start())
_mark("probe_imported")
# Registered first, so it runs last of all atexit handlers: the interpreter's own teardown follows.
atexit.register(_mark, "atexit")


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    _mark("configured")


def pytest_collection_finish(session: pytest.Session) -> None:
    _mark("collected")


def pytest_runtest_logstart(nodeid: str, location) -> None:
    _mark("test_start")  # under xdist the controller's marks echo its workers' (the reader drops them)


def pytest_runtest_logfinish(nodeid: str, location) -> None:
    _mark("test_finish")


# Around every sessionfinish implementation: ours writes the report there.
@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session):
    _mark("sessionfinish")
    try:
        return (yield)
    finally:
        _mark("sessionfinished")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    _mark("unconfigured")
