"""Wall-clock phase timing that waits for the device, so async GPU work lands in its phase."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

PhaseListener = Callable[[str, "float | None"], None]
"""Called with (phase, None) when a timed phase starts and (phase, seconds) when it ends."""

_LISTENERS: list[PhaseListener] = []


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def phase_listener(listener: PhaseListener) -> Iterator[None]:
    """Tells `listener` about every phase timed inside the block (e.g. to show progress)."""
    _LISTENERS.append(listener)
    try:
        yield
    finally:
        _LISTENERS.remove(listener)


@contextmanager
def timed(into: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    """Adds the phase's seconds to into[name]."""
    for listener in list(_LISTENERS):
        listener(name, None)
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        seconds = time.perf_counter() - start
        into[name] = into.get(name, 0.0) + seconds
        for listener in list(_LISTENERS):
            listener(name, seconds)
