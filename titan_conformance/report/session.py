"""The pytest side of reports: record check results and run data, merge them, write at the end.

Every process records: `record_check` (called by `assert_check`) and the `tc_run` fixture queue
JSON records that ride on the next test report as user properties, so under xdist they reach the
controller with the test's outcome (and are not lost when a worker dies later). The controller, or
the single process without xdist, takes them off the report again (they stay out of --junitxml),
merges them in a `ReportStore`, notes workers that crash, and writes the report at session end.

Imported by the plugin at start-up: keep module-level imports cheap (no torch, no jinja2).
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from titan_conformance.errors import ConformanceError
from titan_conformance.report.merge import SUITE_NODEID, ReportStore

CHECK_KEY = "titan_conformance.check"
RUN_KEY = "titan_conformance.run"
SUITE_KEY = "titan_conformance.suite"
VARIANT_KEY = "titan_conformance.variant"
LEFTOVER_KEY = "titan_conformance.leftover"
KEYS = (CHECK_KEY, RUN_KEY, SUITE_KEY, VARIANT_KEY, LEFTOVER_KEY)
SUITE_PACKAGE = "titan_conformance.conformance."
OPTIONS = ("suite", "variants", "model_path", "generator", "device", "system", "seed", "report_dir", "compile_cache",
           "timeout")
LONG_PHASES = ("compile", "capture")

_pending: list[tuple[str, str]] = []
"""Records of the test running in this process, attached to its next phase report."""


def add_pending(key: str, record: dict[str, Any]) -> None:
    """Keeps a JSON record for the report of the test that is running."""
    _pending.append((key, json.dumps(record)))


def record_check(result: Any) -> None:
    """Keeps a CheckResult for the report of the test that is running."""
    from titan_conformance.report.collect import check_record

    _pending.append((CHECK_KEY, json.dumps(check_record(result))))


def progress(config: pytest.Config, message: str) -> None:
    """One line on the terminal now, even from inside a captured test or an xdist worker."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    worker = getattr(config, "workerinput", {}).get("workerid")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None and not worker:
            reporter.write_line(f"[titan_conformance] {message}")
        else:  # an xdist worker's stderr is the controller's terminal
            print(f"[titan_conformance {worker or ''}] {message}", file=sys.stderr, flush=True)


def _message(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return report.longreprtext if report.failed else ""


def _worker_id(report: pytest.TestReport) -> str:
    node = getattr(report, "node", None)  # set by xdist on the controller
    return getattr(getattr(node, "gateway", None), "id", None) or "main"


class ReportSession:
    """Registered by the plugin in its sessions, in every process; only the controller (or lone
    process) writes. It writes an in-progress report at the session's start (so an older run's
    files never look current, and a run killed without warning leaves a report that says it did
    not finish), then the whole report at the end; a run stopped by Ctrl-C, SIGTERM or
    --tc-timeout ends with a partial one that says which phase each worker had reached."""

    def __init__(self, config: pytest.Config, options: dict[str, Any], report_dir: Path | None,
                 phase_folder: Path | None, worker: str = "main", timeout: float | None = None,
                 variants: list[str] = ()) -> None:
        from titan_conformance.report.phases import PhaseLog

        self.config = config
        self.is_worker = hasattr(config, "workerinput")
        self.options, self.report_dir, self.timeout = options, report_dir, timeout
        self.phases = PhaseLog(worker, phase_folder)
        self.store = ReportStore(variants=list(variants))
        self.report: dict[str, Any] | None = None
        self.written: Path | None = None
        self.write_error: str | None = None
        self.stop_reason: str | None = None
        self.late_signals: list[str] = []
        """Signals that landed while the final report was written (it was written whole)."""
        self._saved_signals: dict[int, Any] = {}

    # --- every process: progress, phases and recording ----------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest):
        if fixturedef.argname == "_tc_build":
            from titan_conformance.timing import phase_listener

            with phase_listener(self._phase):
                return (yield)
        result = yield
        if fixturedef.argname == "_tc_run_result" and result is not None:
            from titan_conformance.report.collect import run_record

            try:
                record = run_record(result, request.getfixturevalue("tc_profile"))
                record["variant"] = request.getfixturevalue("tc_variant").name
                record["gpu_shared"] = request.getfixturevalue("tc_gpu_sharing")
            except Exception as e:  # an odd provider must not fail every check; the report says so
                progress(self.config, f"the report leaves out this worker's run: {type(e).__name__}: {e}")
            else:
                add_pending(RUN_KEY, record)
        return result

    def _phase(self, phase: str, seconds: float | None) -> None:
        if seconds is None:
            self.phases.record(phase)
        if phase in LONG_PHASES:
            progress(self.config, f"{phase} ..." if seconds is None else f"{phase} done in {seconds:.1f}s")

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.phases.record(f"check {item.name}")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        module = getattr(getattr(item, "module", None), "__name__", "")
        if _pending or module.startswith(SUITE_PACKAGE):
            variant = getattr(getattr(item, "callspec", None), "params", {}).get("tc_variant")
            named = [(VARIANT_KEY, variant.name)] if hasattr(variant, "name") else []
            report.user_properties += [(SUITE_KEY, ""), *named, *_pending]
            _pending.clear()
        return report

    # --- the controller (or the only process): merge ------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker:
            return
        ours = [(k, v) for k, v in report.user_properties if k in KEYS]
        if not ours and not SUITE_NODEID.search(report.nodeid):
            return  # not a conformance test
        report.user_properties[:] = [p for p in report.user_properties if p[0] not in KEYS]
        runs = [json.loads(v) for k, v in ours if k == RUN_KEY]
        self.store.add_phase(
            report.nodeid, report.when, report.outcome, report.duration, _worker_id(report), _message(report),
            [json.loads(v) for k, v in ours if k == CHECK_KEY], runs[-1] if runs else None,
            next((v for k, v in ours if k == VARIANT_KEY), None),
        )
        self.store.leftovers += [json.loads(v) for k, v in ours if k == LEFTOVER_KEY]

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeup(self, node: Any) -> None:
        self.store.worker_up(node.gateway.id)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        self.store.worker_down(node.gateway.id, str(error) if error else None)

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo) -> None:
        self.stop_reason = self.stop_reason or _stop_reason(excinfo.value)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """On the controller: SIGTERM (a cancelled CI job) and --tc-timeout end the run like Ctrl-C,
        with a report; the in-progress report replaces whatever the folder held. A signal that
        lands while it is written stops the run right after (`_deferred_signals`)."""
        if self.is_worker:
            return
        self._catch(signal.SIGTERM, _interrupt)
        if self.timeout:
            self._catch(signal.SIGALRM, functools.partial(_timed_out, self.timeout))
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
        with _deferred_signals() as caught:
            self._write(self.store.to_report(-1, 0, False, self.options, in_progress=True))
        if caught:
            signal.raise_signal(caught[0])  # now handled as it would have been: the run stops

    def _catch(self, signum: int, handler: Any) -> None:
        try:
            self._saved_signals[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread
            pass

    # Before xdist's, which waits for the workers' processes to end (seconds of interpreter and CUDA
    # teardown each): every worker has reported by then, and the report is written meanwhile.
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """The final report, written with SIGINT/SIGTERM held off (a run that finished keeps its
        report whatever lands meanwhile); the exit status follows the recorded results too."""
        if self.timeout and signal.SIGALRM in self._saved_signals:
            signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            if not self.is_worker:
                with _deferred_signals() as caught:
                    self._finish(session, exitstatus)
                self.late_signals = [signal.Signals(s).name for s in caught]
        finally:
            for signum, handler in self._saved_signals.items():
                signal.signal(signum, handler)

    def _finish(self, session: pytest.Session, exitstatus: int) -> None:
        from titan_conformance.report.phases import describe

        interrupted = self.stop_reason is not None or exitstatus == pytest.ExitCode.INTERRUPTED
        phases = self.phases.read_all()
        stop = None
        if interrupted:
            stop = (self.stop_reason or "the run was interrupted") + (f", {describe(phases)}" if phases else "")
        report = self.store.to_report(int(exitstatus), session.testscollected, interrupted, self.options,
                                      stopped=stop, phases=phases)
        session.exitstatus = report["exitstatus"] = _exit_status(int(session.exitstatus), report)
        self._write(report)
        self.report = report
        if self.write_error and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR  # no report is not a pass

    def _write(self, report: dict[str, Any]) -> None:
        if self.config.option.collectonly:  # nothing ran: no report, and an older one stays as it was
            return
        from titan_conformance.report.write import append_step_summary, write_report

        try:
            self.written = write_report(report, self.report_dir)
            if not report.get("in_progress"):
                append_step_summary((self.written / "summary.md").read_text(encoding="utf-8"))
            self.write_error = None
        except (ConformanceError, OSError) as e:
            self.write_error = str(e)
        except Exception as e:  # a bug in the report must not hide the run's results
            self.write_error = f"{type(e).__name__}: {e} (a bug in titan_conformance's report writer)"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.report is None or self.config.option.collectonly:
            return
        from titan_conformance.report.terminal import terminal_summary

        terminal_summary(terminalreporter, self.report, self.written, self.write_error, self.late_signals)


def _exit_status(status: int, report: dict[str, Any]) -> int:
    """pytest's status, unless the recorded results say otherwise: a check that recorded a failure
    fails the session (TESTS_FAILED, 1) whatever pytest was told, and a session that judged
    nothing (every test skipped) is NO_TESTS_COLLECTED (5), never OK."""
    if status != pytest.ExitCode.OK:
        return status
    if report["disagreements"]:
        return int(pytest.ExitCode.TESTS_FAILED)
    if report["verdict"]["status"] == "nothing judged":
        return int(pytest.ExitCode.NO_TESTS_COLLECTED)
    return status


@contextlib.contextmanager
def _deferred_signals():
    """Holds SIGINT, SIGTERM and SIGALRM while a report is written (a KeyboardInterrupt inside
    os.fsync would lose it): yields the list of those that landed meanwhile."""
    caught: list[int] = []
    saved = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
        try:
            saved[signum] = signal.signal(signum, lambda s, f: caught.append(s))
        except ValueError:  # not the main thread: nothing to hold
            pass
    try:
        yield caught
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


class TimedOut(KeyboardInterrupt):
    """--tc-timeout ran out: stops the session as Ctrl-C would, and says why."""


def _stop_reason(error: BaseException) -> str:
    if isinstance(error, TimedOut):
        return str(error)
    text = str(error)
    return f"the run was interrupted ({text})" if text.startswith("SIG") else "the run was interrupted (Ctrl-C)"


def _timed_out(seconds: float, signum: int, frame: Any) -> None:
    raise TimedOut(f"--tc-timeout ran out after {seconds:g} s")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)
