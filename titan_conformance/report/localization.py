"""Where a failed parity verdict's two sides part (`checks.localize`), as the report shows it: for
each stage of the forward (the embedding, every block, the final norm, the logits, the logprobs),
the largest divergence of its probe points in multiples of their precision floor."""

from __future__ import annotations

from typing import Any

from titan_conformance.protocol.probe_points import split_point


def localized_checks(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(test, check, its localization) of every failed check that was localized."""
    return [(t["nodeid"].split("/")[-1], c["name"], c["metrics"]["localization"])
            for t in report["tests"] for c in t["checks"]
            if not c["passed"] and (c.get("metrics") or {}).get("localization")]


def stages(localization: dict[str, Any]) -> dict[str, float]:
    """Stage -> the largest divergence of its points (multiples of the floor), in forward order."""
    out: dict[str, float] = {}
    for name, point in localization["points"].items():
        layer, _ = split_point(name)
        stage = f"block {layer}" if layer is not None else name.replace("_", " ")
        out[stage] = max(out.get(stage, 0.0), float(point["pair"]))  # report.json writes inf as "inf"
    return out


def markdown_lines(check: str, localization: dict[str, Any]) -> list[str]:
    """A short table: one row of stages, one of their divergence."""
    per_stage = stages(localization)
    first = localization.get("first_label") or "no point past the factor"
    return [
        f"Where the sides part (`{check}`): {first}. The largest divergence per stage, in multiples of the precision "
        f"floor (past {localization['factor']:g}x diverges; {localization['sequences']} sequences probed in "
        f"{float(localization['seconds']):.2f} s):", "",
        "| " + " | ".join(per_stage) + " |", "|" + " ---: |" * len(per_stage),
        "| " + " | ".join(f"{v:.3g}" for v in per_stage.values()) + " |",
    ]
