"""The versioned layout of report.json, and loading a report with one clear error when it is bad.

A report is a JSON object:

- `schema` ("titan_conformance.report"), `schema_version` (int), `created` (ISO 8601, UTC);
- `partial` (bool) and `partial_reason`: true when the run was interrupted or did not run every
  collected test; `exitstatus` (pytest's);
- `environment`: versions (python, torch, CUDA, driver, vLLM), GPU name, profile, device, backends,
  `system_details` (what the provider says about itself, e.g. torchtitan's version and capture policy);
- `workers`: worker id -> {`status`: finished | crashed | interrupted | running, `error`};
- `summary`: counts of test outcomes;
- `variants`: variant name (`base`, or a `[variants.NAME]` of the profile) -> {`status`: ran |
  build failed | skipped | not run, `worker`, `profile`, `reason`}, in the suite's order;
- `tests`: one record per test: `nodeid`, `variant`, `property`, `outcome`, `duration_s`, `worker`,
  `message`, and `checks` (each: `name`, `passed`, `message`, `metrics`, `limits`);
- `runs`: variant name -> what its GRPO run measured (`worker`, `startup`, `steps`,
  `logprob_diff`, `compile`, `capture`, ...); each variant is built and run once per session.

`schema_version` changes when a field changes meaning or disappears; readers refuse other versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from titan_conformance.errors import ConformanceError

SCHEMA = "titan_conformance.report"
SCHEMA_VERSION = 2
"""2: runs and tests per variant (1 had runs per worker)."""

OUTCOMES = ("passed", "failed", "skipped", "error")
WORKER_STATUSES = ("finished", "crashed", "interrupted", "running")

_TOP_LEVEL: dict[str, type | tuple[type, ...]] = {
    "created": str,
    "partial": bool,
    "environment": dict,
    "workers": dict,
    "summary": dict,
    "variants": dict,
    "tests": list,
    "runs": dict,
}
_TEST: dict[str, type | tuple[type, ...]] = {
    "nodeid": str, "variant": str, "property": str, "outcome": str, "duration_s": (int, float), "worker": str, "checks": list,
}
_CHECK: dict[str, type | tuple[type, ...]] = {
    "name": str, "passed": bool, "message": str, "metrics": dict, "limits": dict,
}
_RUN: dict[str, type | tuple[type, ...]] = {"worker": str, "startup": dict, "steps": list, "compile": dict}


def _fields(obj: Any, spec: dict[str, type | tuple[type, ...]], where: str) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where} is a {type(obj).__name__}, not an object"]
    problems = []
    for key, kind in spec.items():
        if key not in obj:
            problems.append(f"{where} has no {key!r}")
        elif not isinstance(obj[key], kind) or (kind is not bool and isinstance(obj[key], bool)):
            problems.append(f"{where}.{key} is a {type(obj[key]).__name__}")
    return problems


def problems(data: Any) -> list[str]:
    """What is wrong with a decoded report of this schema version (empty when it is well formed)."""
    found = _fields(data, _TOP_LEVEL, "the report")
    if found:
        return found
    for i, test in enumerate(data["tests"]):
        found += _fields(test, _TEST, f"tests[{i}]")
        if not found and test["outcome"] not in OUTCOMES:
            found.append(f"tests[{i}].outcome is {test['outcome']!r}, not one of {', '.join(OUTCOMES)}")
        for j, check in enumerate(test.get("checks", []) if isinstance(test, dict) else []):
            found += _fields(check, _CHECK, f"tests[{i}].checks[{j}]")
    for variant, run in data["runs"].items():
        found += _fields(run, _RUN, f"runs[{variant!r}]")
    return found


def validate(data: Any, source: str) -> dict[str, Any]:
    """Returns `data` when it is a report this version reads; raises ConformanceError otherwise."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ConformanceError(
            f"{source} is not a titan_conformance report: its top-level object has no "
            f"\"schema\": \"{SCHEMA}\". Pass the report.json that a conformance run wrote into its "
            "--tc-report-dir."
        )
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConformanceError(
            f"{source} has report schema version {version!r}, but this titan_conformance reads version "
            f"{SCHEMA_VERSION} only, so its fields may mean something else. Re-run the suite with this "
            "version of titan_conformance to get a comparable report, or compare with the version that "
            "wrote it."
        )
    if found := problems(data):
        shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
        raise ConformanceError(
            f"{source} is a malformed titan_conformance report (schema version {SCHEMA_VERSION}): {shown}. "
            "It was edited or written incompletely; use a report.json written by a conformance run."
        )
    return data


def load_report(path: str | Path) -> dict[str, Any]:
    """Reads and validates a report.json."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConformanceError(f"No report at {path}: the file does not exist.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConformanceError(f"Cannot read the report {path} ({e}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConformanceError(
            f"{path} is a malformed report: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}). "
            "It was edited or written incompletely; use a report.json written by a conformance run."
        ) from None
    return validate(data, str(path))
