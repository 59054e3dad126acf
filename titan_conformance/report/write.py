"""Writing a report's four files atomically, and appending the summary to GitHub's step summary.

Everything is rendered in memory first, then written into a temporary folder inside the report
folder and moved over the old files with `os.replace` (atomic on one filesystem), report.json last.
A run killed at any moment leaves each file either as it was or complete; a run that is
interrupted (Ctrl-C, SIGTERM) writes a complete report marked `"partial": true`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from titan_conformance.errors import ConformanceError
from titan_conformance.report.markdown import fit_bytes, summary_markdown

FILES = ("junit.xml", "summary.md", "report.html", "report.json")
"""In the order they are moved into place: report.json, which says what the others show, last."""
STEP_SUMMARY_LIMIT = 1024 * 1024
"""GitHub's cap on one step's summary file, in bytes."""


def default_report_dir(profile: str, now: float | None = None) -> Path:
    """./reports/<timestamp>-<profile>/ under the current directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path("reports") / f"{stamp}-{Path(profile).stem or 'profile'}"


def render(report: dict[str, Any]) -> dict[str, bytes]:
    """Every file's bytes (the HTML draws the plots, so this is where the time goes)."""
    from titan_conformance.report.html import render_html
    from titan_conformance.report.junit import junit_xml

    return {
        "junit.xml": junit_xml(report),
        "summary.md": summary_markdown(report).encode("utf-8"),
        "report.html": render_html(report).encode("utf-8"),
        "report.json": (json.dumps(report, indent=1, allow_nan=False) + "\n").encode("utf-8"),
    }


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_report(report: dict[str, Any], directory: str | Path) -> Path:
    """Writes the four files into `directory` (created if missing) and returns it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConformanceError(
            f"Cannot create the report folder {directory} ({e}); pass a writable --tc-report-dir."
        ) from None
    files = render(report)
    staging = Path(tempfile.mkdtemp(prefix=".tc-report-", dir=directory))
    try:
        for name in FILES:
            _write_durably(staging / name, files[name])
        for name in FILES:
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


_MARKERS = {
    "junit.xml": b'name="titan_conformance"', "summary.md": b"## titan_conformance:",
    "report.html": b"<title>titan_conformance report", "report.json": b'"schema": "titan_conformance.report"',
}
"""What the first KiB of each of our files holds: a folder's other files are never removed."""


def clear_previous_report(directory: Path) -> None:
    """Removes an earlier run's report files from `directory`, so that a run stopped before it writes
    its own (a usage error, a signal in its first seconds) leaves no stale verdict looking current.
    Best effort: a file that cannot be read or removed stays, and the run's own report replaces it."""
    for name, marker in _MARKERS.items():
        path = directory / name
        try:
            with open(path, "rb") as f:
                if marker in f.read(1024):
                    path.unlink()
        except OSError:
            continue


def append_step_summary(markdown: str, path: str | None = None) -> bool:
    """Appends `markdown` to $GITHUB_STEP_SUMMARY (when set), cut to what its 1 MiB cap leaves."""
    path = path or os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return False
    try:
        used = os.path.getsize(path)
    except OSError:
        used = 0
    room = STEP_SUMMARY_LIMIT - used - 1
    if room < 512:
        return False
    text = fit_bytes(markdown, room, "... cut to fit GitHub's step summary; summary.md has all of it.")
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if used else "") + text)
    return True
