"""Shared, expensive objects: each built once per test process and reused by every test."""

from __future__ import annotations

import dataclasses

import pytest

from titan_conformance.system.grpo_system import GRPOSystem
from titan_conformance.system.profile import Profile, load_profile


def tiny_profile(**compile_changes) -> Profile:
    profile = load_profile("tiny-cpu")
    return dataclasses.replace(profile, compile=dataclasses.replace(profile.compile, **compile_changes))


@pytest.fixture(scope="session")
def compiled_system():
    """The default profile's system, regionally compiled with Inductor."""
    with GRPOSystem(tiny_profile()) as system:
        yield system


@pytest.fixture(scope="session")
def eager_system():
    with GRPOSystem(tiny_profile(enable=False)) as system:
        yield system


pytest_plugins = ["pytester"]
