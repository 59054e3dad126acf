"""Shared, expensive objects: each built once per test process and reused by every test."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from titan_conformance.gpus import share_cpu_threads
from titan_conformance.providers.reference import build_system
from titan_conformance.profile import Profile, load_profile


def tiny_profile(**compile_changes) -> Profile:
    profile = load_profile("tiny-cpu")
    return dataclasses.replace(profile, compile=dataclasses.replace(profile.compile, **compile_changes))


@pytest.fixture(scope="session")
def compiled_system():
    """The default profile's system, regionally compiled with Inductor."""
    with build_system(tiny_profile()) as system:
        yield system


@pytest.fixture(scope="session")
def eager_system():
    with build_system(tiny_profile(enable=False)) as system:
        yield system


def pytest_configure(config):
    if worker := getattr(config, "workerinput", None):
        share_cpu_threads(worker["workercount"])


TESTS = Path(__file__).parent


@pytest.fixture
def run_pytest(pytester, monkeypatch):
    """Runs pytest in a subprocess in pytester's folder, with this checkout's package first on the
    path (so an editable install of another checkout is not used) and tests/ importable (for
    `--tc-system faults:...`)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parent)]))

    def run(*args: str):
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=1200)

    return run


@pytest.fixture
def suite(run_pytest):
    """`pytest --pyargs titan_conformance ...`, as users run the suite."""
    return lambda *args: run_pytest("--pyargs", "titan_conformance", *args)


pytest_plugins = ["pytester"]
