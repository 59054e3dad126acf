"""How an xdist worker of a conformance session ends: at once, after it has reported.

A worker that ran a variant holds a heap of compiled graphs, CUDA graphs and Triton kernels. The
interpreter's own teardown of that heap (pytest's closing garbage collections, then module and
object finalization) took about 1-2 s per worker, and xdist's controller waits for every worker's
process to end before the session can: seconds of every `-n` run, spent freeing memory that the
process exit frees anyway. Everything a worker owes the session was sent with xdist's
`workerfinished` message, and the variant's engines and process groups were released by its
fixtures before that.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from typing import NoReturn


def end_worker_process() -> NoReturn:
    """Runs every atexit handler (coverage's data file, Inductor's compile pool shutdown, vLLM's
    and the user's own), flushes the standard streams and ends the process without the
    interpreter's teardown. xdist's controller reads the closed channel of a worker that has sent
    `workerfinished` as a worker that is done, not as a crash."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)
