"""An xdist worker of our session ends with its controller.

A controller that is SIGKILLed (a CI runner's hard timeout, the OOM killer) cannot tell its workers
to stop: each then runs on, holding its GPU and its share of the cores, until execnet notices the
broken channel (about 8 s, longer inside a long CUDA call). On Linux the kernel can deliver a
signal to a process the moment its parent dies (PR_SET_PDEATHSIG); elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def end_with_parent() -> bool:
    """Asks the kernel for SIGTERM when this process's parent dies (True where that took), and
    ends now if the parent is already gone (reparented before the request)."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died between the two calls
        os.kill(os.getpid(), signal.SIGTERM)
    return True
