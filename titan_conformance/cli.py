"""`titan-conformance`: run the GRPO system, compare two conformance reports, or propose a profile's
time budgets from a report."""

from __future__ import annotations

import argparse
import math
import sys

from titan_conformance.errors import ConformanceError


def _reward_line(label: str, r) -> str:
    return f"{label} mean_reward={r.total:+.3f} (correctness={r.correctness:+.3f}, format={r.format:+.3f})"


def run_grpo(opts: argparse.Namespace) -> int:
    import dataclasses

    from titan_conformance.profile import load_profile
    from titan_conformance.providers.grpo import STARTUP_PHASES
    from titan_conformance.providers.reference import build_system

    profile = load_profile(opts.suite)
    if opts.seed is not None:
        profile = dataclasses.replace(profile, seed=opts.seed)
    if opts.generator:
        profile = dataclasses.replace(profile, generator=dataclasses.replace(profile.generator, backend=opts.generator))
    print(f"Profile {profile.name}: {profile.description}", flush=True)
    with build_system(profile, device=opts.device, model_path=opts.model_path) as system:
        total = sum(system.startup.values())
        phases = ", ".join(f"{p}={system.startup[p]:.1f}s" for p in STARTUP_PHASES if p in system.startup)
        print(f"Startup: {total:.1f}s ({phases}) on {system.device.type}", flush=True)
        print(_reward_line("Pre: ", system.validate()), flush=True)
        for _ in range(opts.steps):
            print(system.step().line(), flush=True)
        print(_reward_line("Post:", system.validate()), flush=True)
        counts = ", ".join(f"{region}={n}" for region, n in system.ledger.counts().items())
        print(f"Compilations: {counts or 'none (compile disabled)'}", flush=True)
        if opts.verbose:
            print(system.ledger.format())
    return 0


def run_compare(opts: argparse.Namespace) -> int:
    from titan_conformance.report.compare import compare, partial_note, table
    from titan_conformance.report.schema import load_report

    base, head = load_report(opts.base), load_report(opts.head)
    rows = compare(base, head, opts.threshold, opts.min_seconds, names=(opts.base, opts.head), allow_partial=opts.allow_partial)
    notes = [n for n in (partial_note(base, opts.base), partial_note(head, opts.head)) if n]
    if not opts.markdown:
        print(f"base: {opts.base}\nhead: {opts.head}\nthreshold: {opts.threshold:.0%} "
              f"(times also by more than {opts.min_seconds}s)\n")
    for note in notes:
        print(f"**PARTIAL**: {note}\n" if opts.markdown else f"PARTIAL: {note}\n")
    print(table(rows, markdown=opts.markdown))
    return 1 if opts.fail_on_regression and any(r.regression for r in rows) else 0


def run_budgets(opts: argparse.Namespace) -> int:
    from titan_conformance.report.budget_proposal import propose_tables
    from titan_conformance.report.schema import load_report

    report = load_report(opts.report)
    print(propose_tables(report, opts.margin, opts.report, opts.allow_failed, opts.allow_partial), end="")
    return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1: run at least one step")
    return value


def finite_non_negative(text: str) -> float:
    """A finite number >= 0: argparse's float takes nan, which makes every comparison false."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="titan-conformance", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    grpo = sub.add_parser("grpo", help="build the GRPO system from a profile and train for N steps")
    grpo.add_argument("--suite", default="tiny-cpu", help="profile name in suites/ or a TOML path")
    grpo.add_argument("--steps", type=positive_int, default=20)
    grpo.add_argument("--seed", type=int, default=None, help="overrides the profile's seed")
    grpo.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    grpo.add_argument("--generator", choices=("native", "vllm"), help="overrides the profile's generator backend")
    grpo.add_argument("--verbose", action="store_true", help="print the compile ledger")
    grpo.add_argument("--model-path", default=None, help="HF checkpoint directory overriding the profile's")
    grpo.set_defaults(run=run_grpo)
    cmp = sub.add_parser("compare", help="before/after table of two report.json files, regressions flagged")
    cmp.add_argument("base", help="report.json of the base (before)")
    cmp.add_argument("head", help="report.json of the head (after)")
    cmp.add_argument("--threshold", type=finite_non_negative, default=0.10,
                     help="relative increase of a time or logprob difference that counts as a regression")
    cmp.add_argument("--min-seconds", type=finite_non_negative, default=0.05,
                     help="a time must also grow by more than this to count (timer noise)")
    cmp.add_argument("--fail-on-regression", action="store_true", help="exit 1 when any regression is flagged")
    cmp.add_argument("--markdown", action="store_true", help="print a Markdown table (for a PR description)")
    cmp.add_argument("--allow-partial", action="store_true",
                     help="compare a partial report (a run stopped early) too, marked as such")
    cmp.set_defaults(run=run_compare)
    bud = sub.add_parser("budgets", help="a profile's [budgets.<device class>] table from a report.json's measurement")
    bud.add_argument("report", help="report.json of a conformance run on the device class to budget")
    bud.add_argument("--margin", type=float, default=2.0, help="budget = margin x the slowest worker's time (default 2)")
    bud.add_argument("--allow-failed", action="store_true",
                     help="propose from a run whose checks failed too, the output marked as such")
    bud.add_argument("--allow-partial", action="store_true",
                     help="propose from a partial report (a run stopped early) too, the output marked as such")
    bud.set_defaults(run=run_budgets)
    opts = parser.parse_args(argv)
    try:
        return opts.run(opts)
    except ConformanceError as e:
        print(f"titan-conformance: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
