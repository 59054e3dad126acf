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
import math
import re
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
_STEP: dict[str, type | tuple[type, ...]] = {"times": dict, "seconds": (int, float, str)}
# Parts that `compare` and `budgets` read where present: each absent, null or of its type.
_OPTIONAL: dict[str, dict[str, type]] = {
    "environment": {"profile": str, "device_class": str, "gpu": str},
    "run": {"device_class": str, "versions": dict, "logprob_diff": dict, "capture": dict},
    "versions": {"gpu": str, "torch": str},
    "logprob_diff": {"stats": dict},
    "capture": {"captured": list},
    "compile": {"counts": dict, "limit_hits": list, "cache": dict},
}

MAX_DEPTH = 64
"""Deepest nesting read. A report nests about 8 deep; a deeper one is crafted, and would exhaust the
recursion of whatever walks it (the JSON decoder, str(), a renderer)."""
_SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone surrogate (JSON's "\\ud800" escape): no text, so no output can encode it."""
NON_FINITE = ("nan", "inf", "-inf")
"""How a report stores a float that is not finite (JSON has no literal for one)."""


def _fields(obj: Any, spec: dict[str, type | tuple[type, ...]], where: str) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where} is {what(obj)}, not an object"]
    problems = []
    for key, kind in spec.items():
        if key not in obj:
            problems.append(f"{where} has no {key!r}")
        elif not isinstance(obj[key], kind) or (kind is not bool and isinstance(obj[key], bool)):
            problems.append(f"{where}.{key} is {what(obj[key])}")
    return problems


def field(where: str, key: str | int) -> str:
    """The name of `where`'s item `key` ('' for the report itself), as errors show it:
    runs['base'].steps[0].times."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    if not key.isidentifier():
        return f"{where}[{key!r}]"
    return f"{where}.{key}" if where else key


def what(value: Any) -> str:
    """A value as an error names it: a text shown (shortened), anything else by its type."""
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    kind = type(value).__name__
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def number(value: Any, source: str, where: str) -> float:
    """A report's number as a float: a stored non-finite marker, or a NaN or Infinity literal from
    another writer, as the non-finite float; an int too large for a float as infinity. Anything
    else is a malformed report."""
    if isinstance(value, str) and value in NON_FINITE:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise malformed(source, [f"{where} is {what(value)}, not a number"])
    try:
        return float(value)
    except OverflowError:  # an int of hundreds of digits
        return math.inf if value > 0 else -math.inf


def _unreadable(data: Any) -> str | None:
    """The first part of `data` nested deeper than MAX_DEPTH, or a text or key holding a lone
    surrogate; None when there is none. Iterative: it must not itself run out of recursion."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str) and (surrogate := _SURROGATE.search(value)):
            return f"{where or 'the report'} holds a lone surrogate ({surrogate.group()!a}), which is not text"
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            if depth == MAX_DEPTH:
                return f"{where or 'the report'} nests deeper than {MAX_DEPTH} levels"
            stack.append((item, field(where, key) if depth < 4 else where, depth + 1))
            if isinstance(key, str):
                stack.append((key, f"a key of {where or 'the report'}", depth + 1))
    return None


def _optional(obj: dict[str, Any], part: str, where: str) -> list[str]:
    return [f"{field(where, key)} is {what(obj[key])}" for key, kind in _OPTIONAL[part].items()
            if obj.get(key) is not None and not isinstance(obj[key], kind)]


def _run_problems(run: dict[str, Any], where: str) -> list[str]:
    found = _optional(run, "run", where) + _optional(run["compile"], "compile", f"{where}.compile")
    for part in ("versions", "logprob_diff", "capture"):
        if isinstance(run.get(part), dict):
            found += _optional(run[part], part, f"{where}.{part}")
    for i, step in enumerate(run["steps"]):
        found += _fields(step, _STEP, f"{where}.steps[{i}]")
    return found


def problems(data: Any) -> list[str]:
    """What is wrong with a decoded report of this schema version (empty when it is well formed)."""
    if unreadable := _unreadable(data):
        return [unreadable]
    found = _fields(data, _TOP_LEVEL, "the report")
    if found:
        return found
    found += _optional(data["environment"], "environment", "environment")
    for i, test in enumerate(data["tests"]):
        found += _fields(test, _TEST, f"tests[{i}]")
        if not found and test["outcome"] not in OUTCOMES:
            found.append(f"tests[{i}].outcome is {test['outcome']!r}, not one of {', '.join(OUTCOMES)}")
        for j, check in enumerate(test.get("checks", []) if isinstance(test, dict) else []):
            found += _fields(check, _CHECK, f"tests[{i}].checks[{j}]")
    for variant, run in data["runs"].items():
        where = f"runs[{variant!r}]"
        found += _fields(run, _RUN, where) or _run_problems(run, where)
    return found


def malformed(source: str, found: list[str]) -> ConformanceError:
    """The error for a report with these problems, the first few named."""
    shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
    return ConformanceError(
        f"{source} is a malformed titan_conformance report (schema version {SCHEMA_VERSION}): {shown}. "
        "It was edited or written incompletely; use a report.json written by a conformance run."
    )


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
        raise malformed(source, found)
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
    except (ValueError, RecursionError) as e:  # ValueError: also an int of more digits than Python converts
        why = (f"{e.msg} at line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else
               "nested deeper than the decoder can follow" if isinstance(e, RecursionError) else str(e))
        raise ConformanceError(
            f"{path} is a malformed report: not valid JSON ({why}). "
            "It was edited or written incompletely; use a report.json written by a conformance run."
        ) from None
    return validate(data, str(path))
