"""The report plugin in real pytest sessions with a stand-in suite (no model): workers' results merge
into one report, a crashed worker is recorded, and a run stopped by SIGTERM leaves a partial report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import TESTS

from titan_conformance.report.schema import load_report

STAND_IN = """
import os, time
from pathlib import Path

from titan_conformance.checks.result import CheckResult
from titan_conformance.plugin_fixtures import assert_check


def test_parity_passes():
    assert_check(CheckResult("logprob_parity", True, "fine", {"max_abs": 1e-7, "tokens": 10}, {"max_abs": 1e-4}))


def test_budget_fails():
    assert_check(CheckResult("budgets", False, "step took 9s, budget 1s", {"step": 9.0}, {"step": 1.0}))


def test_crashes():
    if os.environ.get("STAND_IN") == "crash":
        os._exit(3)


def test_stalls():
    if os.environ.get("STAND_IN") == "stall":
        Path("started").write_text("")
        time.sleep(60)
"""


def _stand_in(pytester) -> None:
    pytester.mkpydir("conformance")
    (pytester.path / "conformance" / "test_stand_in.py").write_text(STAND_IN)


def test_workers_merge_and_a_crashed_worker_is_recorded(pytester, run_pytest, monkeypatch):
    _stand_in(pytester)
    monkeypatch.setenv("STAND_IN", "crash")
    step_summary = pytester.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    result = run_pytest("-n", "2", "--tc-variant", "base", "--tc-report-dir", "out", "--junitxml", "pj.xml", "conformance")
    report = load_report(pytester.path / "out" / "report.json")
    tests = {t["nodeid"].split("::")[-1]: t for t in report["tests"]}
    assert tests["test_parity_passes"]["checks"][0]["metrics"] == {"max_abs": 1e-7, "tokens": 10}
    assert tests["test_budget_fails"]["outcome"] == "failed"
    assert "crashed" in tests["test_crashes"]["message"]
    assert [t["outcome"] for t in report["tests"]].count("passed") == 2 and not report["partial"]
    crashed = [w for w, s in report["workers"].items() if s["status"] == "crashed"]
    assert crashed == [tests["test_crashes"]["worker"]], report["workers"]
    assert "budgets" in step_summary.read_text() and "step took 9s" in step_summary.read_text()
    assert "titan_conformance." not in (pytester.path / "pj.xml").read_text()  # records stay out of --junitxml
    result.stdout.fnmatch_lines(["*titan_conformance report*", "Budgets*FAIL*", "worker gw* crashed*", "report: out/*"])


def test_sigterm_leaves_a_partial_report(pytester):
    _stand_in(pytester)
    env = dict(os.environ, STAND_IN="stall", PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--tc-report-dir", "out", "conformance"],
        cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 120
    while not (pytester.path / "started").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert report["partial"] and "interrupted" in report["partial_reason"], out
    tests = {t["nodeid"].split("::")[-1]: t["outcome"] for t in report["tests"]}
    assert tests == {"test_parity_passes": "passed", "test_budget_fails": "failed", "test_crashes": "passed",
                     "test_stalls": "error"}
    assert "Partial report" in (pytester.path / "out" / "summary.md").read_text()


def _suite_stopped(pytester, *args, signal_after_start=True):
    """The real suite on the slow-compile provider; SIGTERM once its compile has begun."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--pyargs", "titan_conformance", "-p", "no:cacheprovider", "--tc-device", "cpu",
         "--tc-generator", "native", "--tc-system", "bad_providers:slow_compile", "--tc-report-dir", "out", *args],
        cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 300
    while not (pytester.path / "started").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if signal_after_start:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out, load_report(pytester.path / "out" / "report.json")


def test_sigterm_during_the_build_leaves_a_partial_report_with_the_phase(pytester):
    """The build happens in the first check's setup: stopped there, the report still says where."""
    old = pytester.path / "out"
    old.mkdir()
    (old / "report.json").write_text('{"old": true}')  # an older run's files must not look current
    code, out, report = _suite_stopped(pytester)
    assert code == 2, out
    assert report["partial"] and "SIGTERM" in report["partial_reason"] and "main in compile" in report["partial_reason"], out
    assert report["phases"]["main"]["phase"] == "compile" and "old" not in report
    assert "Traceback" not in out


def test_sigterm_under_xdist_names_the_workers_phase(pytester):
    code, out, report = _suite_stopped(pytester, "-n", "1")
    assert report["partial"] and "gw0 in compile" in report["partial_reason"], out


def test_timeout_ends_the_run_with_a_partial_report(pytester):
    code, out, report = _suite_stopped(pytester, "--tc-timeout", "20", signal_after_start=False)
    assert code == 2 and report["partial"], out
    assert "--tc-timeout ran out after 20 s" in report["partial_reason"] and "main in compile" in report["partial_reason"]


def test_the_report_folder_holds_an_in_progress_report_while_the_suite_runs(pytester):
    """Written at the start, before anything is built: a run killed outright leaves it, saying so."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--pyargs", "titan_conformance", "-p", "no:cacheprovider", "--tc-device", "cpu",
         "--tc-system", "bad_providers:slow_compile", "--tc-report-dir", "out"],
        cwd=pytester.path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not (pytester.path / "started").exists() and time.time() < deadline:
            time.sleep(0.1)
        report = load_report(pytester.path / "out" / "report.json")
    finally:
        proc.kill()
        proc.wait()
    assert report["partial"] and report["in_progress"] and "has not finished" in report["partial_reason"]
    assert "Partial report" in (pytester.path / "out" / "summary.md").read_text()
