"""What phase each process of a session is in, so that a run stopped at any moment says where.

The system's build and the whole GRPO run happen inside the first check's setup, so a run stopped
there has no test outcome to show. Each process records its phase as it changes (build,
weight_load, warmup, compile, capture, first_generate, step k of N, the check running); under
xdist each worker writes its own small file in a folder the controller made, and the controller
reads them when it writes the report.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class PhaseLog:
    """This process's phase, mirrored to `<folder>/<worker>.json` when there is a folder."""

    def __init__(self, worker: str, folder: Path | None) -> None:
        self.worker, self.folder = worker, folder
        self.phase: str | None = None
        self.since: float | None = None

    def record(self, phase: str) -> None:
        self.phase, self.since = phase, time.time()
        if self.folder is None:
            return
        tmp = self.folder / f".{self.worker}.json"
        try:
            tmp.write_text(json.dumps({"phase": phase, "since": self.since}))
            os.replace(tmp, self.folder / f"{self.worker}.json")
        except OSError:  # the folder went away: the session is ending
            pass

    def read_all(self) -> dict[str, dict]:
        """worker -> {phase, since}: this process's and, with a folder, every worker's."""
        out = {self.worker: {"phase": self.phase, "since": self.since}} if self.phase else {}
        for path in sorted(self.folder.glob("*.json")) if self.folder else ():
            try:
                out[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
        return out


def describe(phases: dict[str, dict]) -> str:
    """e.g. "gw0 in compile, gw1 in step 3 of 20"."""
    return ", ".join(f"{w} in {p['phase']}" for w, p in phases.items() if p.get("phase"))
