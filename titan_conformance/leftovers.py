"""What a system under test leaves running after it was closed: threads and child processes.

A provider that forgets a non-daemon thread keeps pytest from exiting after the report (Python
joins such threads at exit); one that forgets a child process leaves it running after the gate
exited 0. Both are found by comparing against a snapshot taken before the system was built, named
in the report, and ended: processes are terminated (killed after a grace period); threads cannot be
stopped from outside, so the process ends without waiting for them once pytest is done
(`exit_if_stuck`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

GRACE_S = 3.0
"""How long a leftover process has to end after SIGTERM before it is killed."""
OWN_HELPERS = ("torch._inductor.compile_worker",)
"""Children torch starts for itself and ends at exit (Inductor's compile pool): not leftovers."""

_stuck: list[threading.Thread] = []
"""Leftover non-daemon threads found in this process (the interpreter would wait for them)."""


@dataclass(frozen=True)
class Snapshot:
    """Threads and descendant processes alive at one moment."""

    threads: frozenset[int]
    processes: frozenset[int]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(p) for p in task.read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def _descendants() -> list[int]:
    """This process's descendants (Linux /proc; none elsewhere)."""
    found, todo = [], _children(os.getpid())
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo += _children(pid)
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def snapshot() -> Snapshot:
    return Snapshot(frozenset(t.ident for t in threading.enumerate() if t.ident is not None), frozenset(_descendants()))


def _new_threads(before: Snapshot) -> list[threading.Thread]:
    # ThreadPoolExecutor's workers are non-daemon but joined by concurrent.futures before exit.
    return [t for t in threading.enumerate() if t.ident not in before.threads and not t.daemon and t.is_alive()
            and not t.name.startswith("ThreadPoolExecutor")]


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child, now reaped
            return False
    except ChildProcessError:  # not ours to reap: look at its state
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _end(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + GRACE_S
        while (pids := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pids:
            return


def end_leftovers(before: Snapshot) -> dict[str, list[str]]:
    """Names what was started since `before` and is still running; ends the processes and marks
    the threads for `exit_if_stuck`. Empty lists when nothing was left."""
    threads = _new_threads(before)
    pids = [p for p in _descendants() if p not in before.processes and _alive(p)
            and not any(h in _command(p) for h in OWN_HELPERS)]
    processes = [f"pid {p}: {_command(p)[:200] or '?'}" for p in pids]
    _end(pids)
    _stuck.extend(threads)
    return {"threads": [f"{t.name} (non-daemon)" for t in threads], "processes": processes}


def exit_if_stuck(status: int) -> None:
    """Ends the process now, with `status`, if a leftover thread is still alive: Python would wait
    for it forever after pytest returns. Called last, once every report is written."""
    if any(t.is_alive() for t in _stuck):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
