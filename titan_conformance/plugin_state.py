"""What the plugin's hooks and fixtures share in a session: stash keys and xdist workerinput keys."""

from __future__ import annotations

import contextlib

import pytest

from titan_conformance.inputs import SuiteOptions
from titan_conformance.report.session import ReportSession

WORKER_FLAG = "titan_conformance"
"""workerinput key: the controller's session is ours (so the worker's is too)."""
PHASES_KEY = "titan_conformance_phases"
"""workerinput key: the folder where workers record their phases."""
GPUS_KEY = "titan_conformance_gpus"
"""workerinput key: the GPUs the controller found, which the workers share out."""
SUITE_KEY = "titan_conformance_suite"
"""workerinput key: the suite the controller resolved (the GPU default is decided there, where
torch may look for CUDA; a worker must not before its GPUs are pinned)."""

OPTIONS = pytest.StashKey[SuiteOptions]()
VARIANTS = pytest.StashKey[list]()
GROUPED = pytest.StashKey[bool]()
GPUS = pytest.StashKey[list]()
"""The GPUs the whole session may use (before a worker was pinned to its share)."""
CLEANUP = pytest.StashKey[contextlib.ExitStack]()
SESSION = pytest.StashKey[ReportSession]()
EXIT_STATUS = pytest.StashKey[int]()
"""The session's final exit status (for a process that must end without waiting for leftover threads)."""
