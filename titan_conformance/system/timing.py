"""Wall-clock phase timing that waits for the device, so async GPU work lands in its phase."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(into: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    """Adds the phase's seconds to into[name]."""
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        into[name] = into.get(name, 0.0) + time.perf_counter() - start
