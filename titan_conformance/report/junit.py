"""junit.xml: one testsuite, one testcase per test, for CI systems that show JUnit results."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

_JUNIT_FAILURE = {"failed": "failure", "error": "error", "skipped": "skipped"}


def _testcase(suite: ET.Element, test: dict[str, Any]) -> None:
    path, _, name = test["nodeid"].rpartition("::")
    classname = path.removesuffix(".py").replace("/", ".").lstrip(".")
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{test['duration_s']:.3f}")
    props = ET.SubElement(case, "properties") if test["checks"] else None
    for check in test["checks"]:
        for key, value in check["metrics"].items():
            if isinstance(value, (int, float, str)):
                ET.SubElement(props, "property", name=f"{check['name']}.{key}", value=str(value))
    if tag := _JUNIT_FAILURE.get(test["outcome"]):
        message = test["message"] or test["outcome"]
        element = ET.SubElement(case, tag, message=message.splitlines()[0][:500] if message else "")
        element.text = message


def junit_xml(report: dict[str, Any]) -> bytes:
    s = report["summary"]
    suite = ET.Element(
        "testsuite", name="titan_conformance", tests=str(len(report["tests"])), failures=str(s["failed"]),
        errors=str(s["error"]), skipped=str(s["skipped"]), time=f"{report['duration_s']:.3f}",
        timestamp=report["created"],
    )
    props = ET.SubElement(suite, "properties")
    env = report["environment"]
    for key in ("profile", "device", "gpu", "torch", "cuda", "driver", "vllm"):
        ET.SubElement(props, "property", name=key, value=str(env.get(key)))
    ET.SubElement(props, "property", name="partial", value=str(report["partial"]).lower())
    for worker, state in report["workers"].items():
        ET.SubElement(props, "property", name=f"worker.{worker}", value=state["status"])
    for test in report["tests"]:
        _testcase(suite, test)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"
