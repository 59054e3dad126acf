"""A check's outcome: verdict, metrics, and a message that names the cause."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CheckResult:
    name: str
    """The property checked, e.g. `logprob_parity`."""
    passed: bool
    message: str
    """One line when passed; when failed, the cause and what was measured."""
    metrics: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    """The tolerance or budget each metric was held to."""
