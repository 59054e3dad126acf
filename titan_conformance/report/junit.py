"""junit.xml: one testsuite, one testcase per test, for CI systems that show JUnit results."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from titan_conformance.report.verdict import session_verdict

_JUNIT_FAILURE = {"failed": "failure", "error": "error", "skipped": "skipped"}
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
"""Characters XML 1.0 cannot hold at all, escaped or not (engine errors carry ANSI colours: ESC)."""
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def xml_text(text: str) -> str:
    """`text` as XML 1.0 can hold it: ANSI colour codes dropped, other forbidden characters shown
    as `\\xNN` (what they were stays readable)."""
    return _XML_FORBIDDEN.sub(lambda m: f"\\x{ord(m.group()):02x}", _ANSI.sub("", text))


def _element(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    """A child element whose every attribute and text XML can hold."""
    element = ET.SubElement(parent, tag, {k: xml_text(str(v)) for k, v in attrs.items()})
    if text is not None:
        element.text = xml_text(text)
    return element


def _testcase(suite: ET.Element, test: dict[str, Any]) -> None:
    path, _, name = test["nodeid"].rpartition("::")
    classname = path.removesuffix(".py").replace("/", ".").lstrip(".")
    case = _element(suite, "testcase", classname=classname, name=name, time=f"{test['duration_s']:.3f}")
    props = _element(case, "properties") if test["checks"] else None
    for check in test["checks"]:
        for key, value in check["metrics"].items():
            if isinstance(value, (int, float, str)):
                _element(props, "property", name=f"{check['name']}.{key}", value=str(value))
    if tag := _JUNIT_FAILURE.get(test["outcome"]):
        message = test["message"] or test["outcome"]
        _element(case, tag, message, message=message.splitlines()[0][:500] if message else "")


def junit_xml(report: dict[str, Any]) -> bytes:
    """The report as JUnit XML. A session that neither passed nor failed (interrupted, timed out,
    or judging nothing) gets a testcase `session` in error, so no JUnit reader shows it green."""
    s = report["summary"]
    verdict = session_verdict(report)
    session_error = verdict.status not in ("passed", "failed")
    root = ET.Element("testsuites")
    suite = _element(
        root, "testsuite", name="titan_conformance", tests=str(len(report["tests"]) + session_error),
        failures=str(s["failed"]), errors=str(s["error"] + session_error), skipped=str(s["skipped"]),
        time=f"{report['duration_s']:.3f}", timestamp=report["created"],
    )
    props = _element(suite, "properties")
    env = report["environment"]
    for key in ("profile", "device", "gpu", "torch", "cuda", "driver", "vllm"):
        _element(props, "property", name=key, value=str(env.get(key)))
    _element(props, "property", name="partial", value=str(report["partial"]).lower())
    _element(props, "property", name="verdict", value=verdict.status)
    for worker, state in report["workers"].items():
        _element(props, "property", name=f"worker.{worker}", value=state["status"])
    for test in report["tests"]:
        _testcase(suite, test)
    if session_error:
        case = _element(suite, "testcase", classname="titan_conformance", name="session", time="0.000")
        _element(case, "error", verdict.reason, message=f"{verdict.status}: {verdict.reason}"[:500])
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"
