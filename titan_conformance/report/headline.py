"""The headline of a report: one verdict per property, with the numbers that decided it.

Shared by summary.md, report.html and the terminal summary, so all three say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from titan_conformance.report.merge import PROPERTIES

VERDICT_MARK = {"pass": "✅", "fail": "❌", "skip": "⏭️", "not run": "➖"}


@dataclass
class PropertyRow:
    key: str
    title: str
    verdict: str
    """pass, fail, skip or not run."""
    tests: str
    """e.g. "3 passed, 1 skipped"."""
    numbers: str
    """The key measurements against their limits, e.g. "max |diff| 2.6e-06 (limit 1.0e-04)"."""


def _present(m: dict, fields: dict[str, str]) -> list[str]:
    """`label value` for each metric in `fields` (key -> "label:format") that `m` has as a number."""
    out = []
    for key, spec in fields.items():
        label, _, fmt = spec.partition(":")
        if isinstance(m.get(key), (int, float)):
            out.append(f"{label} {format(m[key], fmt)}".strip())
    return out


def _limit(limits: dict, key: str, fmt: str) -> str:
    return f" (limit {format(limits[key], fmt)})" if isinstance(limits.get(key), (int, float)) else ""


def _parity(m: dict, limits: dict) -> str:
    parts = _present(m, {"max_abs": "max abs diff:.2e"})
    if parts:
        parts[0] += _limit(limits, "max_abs", ".1e")
    parts += _present(m, {"p99_abs": "p99:.2e"})
    if isinstance(m.get("tokens"), int):
        parts.append(f"{m['tokens']} tokens")
    return ", ".join(parts)


def _recompiles(m: dict, limits: dict) -> str:
    hits = f", {len(m['limit_hits'])} limit hit(s)" if m.get("limit_hits") else ""
    return f"max {m.get('max')} compiles per region{_limit(limits, 'recompile_limit', 'd')}{hits}"


def _budgets(m: dict, limits: dict) -> str:
    parts = _present(m, {"startup": "startup:.1f", "step": "step:.2f"})
    return ", ".join(p + "s" for p in parts) + f" ({len(limits)} budgets)"


def _captures(m: dict, limits: dict) -> str:
    counts = m.get("captures")
    times = f", captures per size {counts}" if isinstance(counts, dict) else ""
    return f"captured {m.get('captured')}{times}"


def _graphs(m: dict, limits: dict) -> str:
    worst = max((r.get("graph_vs_eager_max_abs", 0) for r in m.get("per_size", {}).values()
                 if isinstance(r.get("graph_vs_eager_max_abs"), (int, float))), default=0)
    order = f", sizes probed in order {m['probe_order']} (seed {m.get('probe_order_seed')})" if m.get("probe_order") else ""
    return f"replay vs eager max {worst:.2e}{_limit(limits, 'max_abs', '.1e')}{order}"


def _floor(m: dict, limits: dict) -> str:
    worst = {side: max((v for v in m.get(f"{side}_ratio", {}).values() if isinstance(v, (int, float))), default=None)
             for side in ("generator", "trainer")}
    shown = ", ".join(f"{side} x{v:.2f}" for side, v in worst.items() if v is not None)
    return f"{m.get('dtype', '')} floor ratio {shown} (limit x{limits.get('mean_abs', '?')} mean)"


def _overhead(m: dict, limits: dict) -> str:
    return " ".join(_present(m, {"ratio": "generate per decode step x:.2f"})) + _limit(limits, "generate_overhead", "g") + " of a bare step"


def _replays(m: dict, limits: dict) -> str:
    return f"{m.get('graph_replays')} of {m.get('at_captured_sizes')} decode steps replayed a graph"


def _learning(m: dict, limits: dict) -> str:
    return " -> ".join(_present(m, {"pre": "reward:+.3f", "post": ":+.3f"}))


_KEY_NUMBERS: dict[str, Callable[[dict, dict], str]] = {
    "logprob_parity": _parity,
    "recompile_budget": _recompiles,
    "budgets": _budgets,
    "capture_sizes": _captures,
    "cudagraph_equivalence": _graphs,
    "graph_replays": _replays,
    "precision_floor": _floor,
    "generate_overhead": _overhead,
    "learning": _learning,
}


def _verdict(outcomes: list[str]) -> str:
    if any(o in ("failed", "error") for o in outcomes):
        return "fail"
    if "passed" in outcomes:
        return "pass"
    return "skip" if outcomes else "not run"


def _count(outcomes: list[str]) -> str:
    order = ("passed", "failed", "error", "skipped")
    return ", ".join(f"{outcomes.count(o)} {o}" for o in order if o in outcomes) or "no tests"


def variant_names(report: dict[str, Any]) -> list[str]:
    """The session's variants in the suite's order."""
    return list(report.get("variants") or {}) or list(dict.fromkeys(t.get("variant", "base") for t in report["tests"]))


def property_rows(report: dict[str, Any], variant: str | None = None) -> list[PropertyRow]:
    """One row per property (the four, then "Other checks" when any ran), over the tests of
    `variant` (None: of every variant)."""
    rows = []
    mine = [t for t in report["tests"] if variant is None or t.get("variant", "base") == variant]
    for key, title in PROPERTIES.items():
        tests = [t for t in mine if t["property"] == key]
        if key == "other" and not tests:
            continue
        outcomes = [t["outcome"] for t in tests]
        numbers = []
        for check in (c for t in tests for c in t["checks"]):
            if (fmt := _KEY_NUMBERS.get(check["name"])) and check["metrics"]:
                try:
                    numbers.append(fmt(check["metrics"], check["limits"]))
                except (TypeError, ValueError, AttributeError):  # a report edited by hand still renders
                    continue
        if not numbers:
            numbers = [t["message"] for t in tests if t["outcome"] == "skipped"][:1]
        rows.append(PropertyRow(key, title, _verdict(outcomes), _count(outcomes), "; ".join(numbers)))
    return rows


def variant_matrix(report: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Variants x properties: the variant names, then (property title, verdict per variant) rows."""
    names = variant_names(report)
    per_variant = {name: {r.key: r.verdict for r in property_rows(report, name)} for name in names}
    rows = [(title, [per_variant[n].get(key, "not run") for n in names])
            for key, title in PROPERTIES.items() if any(key in per_variant[n] for n in names)]
    return names, rows


def variant_line(name: str, state: dict[str, Any]) -> str:
    """e.g. "fp32: ran on gw1 (qwen3-0.6b[fp32])" or "vllm: skipped: variant 'vllm' runs ..."."""
    where = f" on {state['worker']}" if state.get("worker") and state.get("status") == "ran" else ""
    profile = f" ({state['profile']})" if state.get("profile") else ""
    reason = f": {state['reason']}" if state.get("reason") else ""
    return f"{name}: {state.get('status', 'not run')}{where}{profile}{reason}"


def overall(report: dict[str, Any]) -> str:
    """e.g. "2 failed, 5 passed, 2 skipped" (or "no tests ran")."""
    s = report["summary"]
    parts = [f"{s[o]} {o}" for o in ("failed", "error", "passed", "skipped") if s.get(o)]
    return ", ".join(parts) or "no tests ran"


def warning_lines(report: dict[str, Any]) -> list[str]:
    """What the session must not pass over in silence though no check judges it: a variant whose
    system left threads or processes running after it was closed, a compile cache loaded without
    authentication."""
    lines = [f"variant {item.get('variant')} left running after close: "
             f"{'; '.join([*item.get('threads', []), *item.get('processes', [])])} (processes ended by titan_conformance)"
             for item in report.get("leftovers") or []]
    for name, run in (report.get("runs") or {}).items():
        if isinstance(run, dict) and (text := ((run.get("compile") or {}).get("cache") or {}).get("unauthenticated")):
            lines.append(f"variant {name}: compile cache {text}")
    return lines
