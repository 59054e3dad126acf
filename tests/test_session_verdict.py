"""Green means judged: the session's verdict comes from the recorded results; a session that judged
nothing, or did not finish, is never green; a usage error or a signal leaves no stale green report;
what a system leaves running is named and ended; a worker does not outlive its controller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TESTS
from report_samples import sample_report

from titan_conformance.report.write import write_report

STAND_IN = """
import os, time
from pathlib import Path

import pytest

from titan_conformance.checks.result import CheckResult
from titan_conformance.plugin_fixtures import assert_check

if os.environ.get("STAND_IN") == "neuter":
    pytest.fail = lambda *args, **kwargs: None  # what a hostile system under test could do in-process


def test_passes():
    assert_check(CheckResult("logprob_parity", True, "fine", {"max_abs": 1e-7, "tokens": 10}, {"max_abs": 1e-4}))


def test_fails():
    assert_check(CheckResult("budgets", False, "step took 9s, budget 1s", {"step": 9.0}, {"step": 1.0}))


def test_skips():
    pytest.skip("no such capability here")


def test_uses_the_system(tc_system):
    assert tc_system.name


def test_stalls():
    if os.environ.get("STAND_IN") == "stall":
        Path("started").write_text(str(os.getpid()))
        time.sleep(120)
"""

SIGNAL_ON_WRITE = """
import os, signal
import titan_conformance.report.write as write

_real = write.write_report


def write_report(report, directory):
    if not report.get("in_progress"):  # the final report: Ctrl-C and SIGTERM land while it is written
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
    return _real(report, directory)


write.write_report = write_report
"""


def _run(folder: Path, *args: str, mode: str = "", wait: bool = True, **popen):
    (folder / "conformance").mkdir(exist_ok=True)
    (folder / "conformance" / "__init__.py").write_text("")
    (folder / "conformance" / "test_stand_in.py").write_text(STAND_IN)
    env = dict(os.environ, STAND_IN=mode, PYTHONPATH=os.pathsep.join([str(folder), str(TESTS), str(TESTS.parent)]))
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--tc-device", "cpu", "--tc-generator", "native",
            "--tc-report-dir", "out", *args, "conformance"]
    if not wait:
        return subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=300, **popen)


def _summary(folder: Path) -> str:
    return (folder / "out" / "summary.md").read_text()


def test_a_recorded_failure_fails_the_session_whatever_pytest_was_told(tmp_path):
    proc = _run(tmp_path, "-k", "passes or fails", mode="neuter")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert [t["nodeid"] for t in report["tests"] if t["outcome"] == "failed"] == report["disagreements"] != []
    assert report["verdict"]["status"] == "failed"
    assert _summary(tmp_path).startswith("## titan_conformance: ❌ failed") and "Outcome overridden" in _summary(tmp_path)
    assert "recorded a failure, but pytest reported the test passed" in _summary(tmp_path)


def test_a_session_that_judged_nothing_is_not_green(tmp_path):
    proc = _run(tmp_path, "-k", "skips")
    assert proc.returncode == 5, proc.stdout[-3000:]  # pytest's NO_TESTS_COLLECTED: nothing was judged
    assert _summary(tmp_path).startswith("## titan_conformance: ⚠️ nothing judged")
    assert "no such capability here" in _summary(tmp_path)
    junit = (tmp_path / "out" / "junit.xml").read_text()
    assert 'name="session"' in junit and "<error" in junit
    assert "NOTHING JUDGED" in proc.stdout and "✅" not in (tmp_path / "out" / "report.html").read_text()
    proc = _run(tmp_path, "-k", "no_test_has_this_name")
    assert proc.returncode == 5 and "no test was selected" in _summary(tmp_path)


def test_an_interrupted_run_is_never_green(tmp_path):
    proc = _run(tmp_path, "-k", "passes or stalls", mode="stall", wait=False)
    deadline = time.time() + 120
    while not (tmp_path / "started").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-3000:]
    assert _summary(tmp_path).startswith("## titan_conformance: ⚠️ incomplete"), _summary(tmp_path)[:300]
    assert 'name="session"' in (tmp_path / "out" / "junit.xml").read_text()
    assert "incomplete" in (tmp_path / "out" / "report.html").read_text() and "INCOMPLETE" in out


def test_a_usage_error_leaves_no_earlier_green_report(tmp_path):
    write_report(sample_report(), tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    proc = _run(tmp_path, "--tc-timeout", "0")
    assert proc.returncode == 4, proc.stdout[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]


def test_a_signal_while_the_final_report_is_written_keeps_it_whole(tmp_path):
    (tmp_path / "signal_on_write.py").write_text(SIGNAL_ON_WRITE)
    proc = _run(tmp_path, "-p", "signal_on_write", "-k", "passes")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not report["partial"] and not report["in_progress"] and report["verdict"]["status"] == "passed"
    assert "SIGINT, SIGTERM arrived while the final report was written" in proc.stdout
    assert "KeyboardInterrupt" not in proc.stdout + proc.stderr


def test_what_a_system_leaves_running_is_named_and_ended(tmp_path):
    proc = _run(tmp_path, "--tc-system", "bad_providers:leaky", "-k", "uses_the_system")  # times out if it hangs
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    leftovers = json.loads((tmp_path / "out" / "report.json").read_text())["leftovers"]
    assert leftovers[0]["threads"] == ["leaky-engine-loop (non-daemon)"], leftovers
    assert "sleep 600" in leftovers[0]["processes"][0]
    assert not Path(f"/proc/{(tmp_path / 'leaky.pid').read_text()}").exists()
    assert "left running after close" in _summary(tmp_path)


def test_a_worker_ends_with_its_controller(tmp_path):
    proc = _run(tmp_path, "-n", "1", "-k", "stalls", mode="stall", wait=False)
    deadline = time.time() + 120
    while not (tmp_path / "started").exists() and time.time() < deadline:
        time.sleep(0.1)
    worker = int((tmp_path / "started").read_text())
    proc.kill()  # SIGKILL: the controller cannot tell its workers anything
    proc.communicate(timeout=60)
    deadline = time.time() + 3
    while Path(f"/proc/{worker}").exists() and time.time() < deadline:
        time.sleep(0.05)
    state = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{worker}").exists() else "gone"
    assert state in ("gone", "Z"), state
