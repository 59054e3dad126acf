"""Speed as ratios measured within one run: generate time per decode step against a bare decode step.

Absolute times on shared CPU machines swing 2x, so a CPU budget only catches gross regressions (a
generate phase made 5x slower passed a 30 s step budget against a 0.44 s step). A ratio of two
times taken moments apart in the same process cancels the machine's speed: after every GRPO step
the harness times one bare decode step at that step's batch (a graph replay on CUDA, the compiled
step elsewhere), and the step's generate time per decode step is held to a multiple of it. A
host-side stall, an extra synchronization, a decode loop that lost its graphs or a slow sampling
path shows as a ratio over the limit, whatever the machine.
"""

from __future__ import annotations

import statistics

from titan_conformance.checks.result import CheckResult


def generate_ratios(run) -> list[dict[str, float]]:
    """Per step that decoded: generate seconds per decode step, the bare step, and their ratio."""
    out = []
    for record, bare in zip(run.records, run.decode_step_seconds):
        decode = getattr(record, "decode", None)
        if bare is None or decode is None or not decode.decode_steps or "generate" not in record.times:
            continue
        per_step = record.times["generate"] / decode.decode_steps
        out.append({"step": record.step, "generate_per_decode_step_s": per_step, "bare_decode_step_s": bare,
                    "ratio": per_step / bare if bare > 0 else float("inf")})
    return out


def check_generate_overhead(run, profile) -> CheckResult | str:
    """The verdict, or a reason to skip when the profile turns the check off."""
    limit = profile.speed.generate_overhead
    if not limit:
        return f"profile {profile.name!r} sets speed.generate_overhead = 0"
    rows = generate_ratios(run)
    if not rows:
        return CheckResult(
            "generate_overhead", False,
            f"No GRPO step of the run decoded a token with a bare decode step timed after it ({len(run.records)} steps, "
            f"{run.error or 'no error'}): there is nothing to compare generate time against.",
            {}, {"generate_overhead": limit},
        )
    median = statistics.median(r["ratio"] for r in rows)
    per_step = statistics.median(r["generate_per_decode_step_s"] for r in rows)
    bare = statistics.median(r["bare_decode_step_s"] for r in rows)
    metrics = {"ratio": median, "generate_per_decode_step_s": per_step, "bare_decode_step_s": bare, "per_step": rows}
    limits = {"generate_overhead": limit}
    what = (f"generate took {per_step * 1e3:.2f} ms per decode step, {median:.2f}x one bare decode step "
            f"({bare * 1e3:.2f} ms) timed after it in the same run (median over {len(rows)} steps)")
    if median <= limit:
        return CheckResult("generate_overhead", True, f"{what}; allowed {limit:g}x", metrics, limits)
    return CheckResult(
        "generate_overhead", False,
        f"Generate is slow for its own decode step: {what}, over the allowed {limit:g}x. Time goes somewhere "
        "around the step: a host-side stall or an extra synchronization per token, decode steps that lost "
        "their CUDA graphs, a slow sampling or bookkeeping path.",
        metrics, limits,
    )
