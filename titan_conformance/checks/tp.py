"""Verdicts of the tensor-parallel checks, over what every rank of a TP run returned
(`titan_conformance.protocol.RankReport`)."""

from __future__ import annotations

import torch

from titan_conformance.checks.parity import flat, parity_verdict
from titan_conformance.checks.recompiles import recompile_verdict
from titan_conformance.checks.result import CheckResult

UNWRAP_HINTS = {
    "'_local_tensor'": (
        " With parallel.unwrap_async = false a backward through a compiled block traced on an "
        "AsyncCollectiveTensor input fails in DTensor's redistribute backward ('Tensor' object has no "
        "attribute '_local_tensor'; torch 2.13, Inductor and aot_eager): set parallel.unwrap_async = true."
    ),
    "'elem'": (
        " With parallel.unwrap_async = false a DTensor block input holds an AsyncCollectiveTensor on "
        "block 0 (the embedding's all-reduce) and a Tensor on the others, and a compiled block's "
        "runtime wrapper fails on the one it was not traced for ('Tensor' object has no attribute "
        "'elem'; torch 2.13, torchtitan's TP plan on DTensor): set parallel.unwrap_async = true."
    ),
}
"""Known failures of a TP run without the unwrap: the error's signature -> what to do."""

TP1_HINT = (
    "The sharded model does not compute what the unsharded one does with the same weights: look at "
    "the TP plan (a layer sharded on the wrong dim, a head count not divided by the degree, a "
    "gradient of a replicated weight that is not reduced)."
)


def run_error(results) -> str | None:
    errors = [f"rank {r.rank}: {r.error}" for r in results if r.error]
    return "; ".join(errors) or None


def unwrap_hint(error: str | None, profile) -> str:
    """What to do about a known failure of a run without the unwrap; "" otherwise."""
    if not error or profile.parallel.unwrap_async:
        return ""
    return next((hint for signature, hint in UNWRAP_HINTS.items() if signature in error), "")


TP_WINDOW = (
    "Judged over each rank's run: every GRPO step, then the probe set rolled out and scored by the "
    "trainer, the generator and an eager TP=1 copy, at the shape classes the steps ran."
)


def tp_recompile_verdict(results, profile) -> CheckResult:
    """Per region and rank: compiles <= recompile_limit and the limit never hit, over a run that
    finished (a rank's error fails it: a build that died in its first compile counts no recompiles)."""
    events = [e for r in results for e in r.events]
    hits = [h for r in results for h in r.limit_hits]
    error = run_error(results)
    c = profile.compile
    verdict = recompile_verdict(events, hits, c.recompile_limit, error, c.max_compiles, c.zero_compiles_after_startup, TP_WINDOW)
    if verdict.passed and error:  # counts of a run that stopped early say nothing about the budget
        verdict.passed = False
        verdict.message = (
            f"the TP run failed before it finished ({error}); the recompile budget was not measured "
            f"over the whole run (compiles so far: {verdict.metrics['compiles_per_region']})."
        )
    if not verdict.passed and (hint := unwrap_hint(error, profile)):
        verdict.message = verdict.message.replace("\n", hint + "\n", 1) if "\n" in verdict.message else verdict.message + hint
    return verdict


def tp_parity_verdicts(results, profile) -> list[CheckResult]:
    """Trainer (TP) vs generator (TP); TP vs TP = 1 with the same weights; ranks agree exactly."""
    if err := run_error(results):
        return [CheckResult("tp_parity", False, f"the TP run failed: {err}.{unwrap_hint(err, profile)}")]
    r0 = results[0]
    tol, bitwise = profile.tolerance, profile.tolerances.bitwise
    tp = len(results)
    out = [
        parity_verdict(
            "tp_trainer_vs_generator",
            f"TP={tp} trainer vs TP={tp} generator logprobs (the run's rollouts and the probe set)",
            torch.cat([flat(r0.step_diffs), flat(r0.trainer_logprobs) - flat(r0.generator_logprobs)]),
            tol, bitwise,
        ),
        # Never bitwise: o_proj, down_proj and the embedding are row-parallel, so each output is
        # the all-reduced sum of tp partial matmuls, not one matmul's own accumulation order.
        parity_verdict(
            "tp_vs_tp1",
            f"TP={tp} vs TP=1 trainer logprobs of the same weights (tolerance even in bitwise mode: "
            "row-parallel layers sum partial products in another order)",
            flat(r0.trainer_logprobs) - flat(r0.tp1_logprobs), tol, False, TP1_HINT,
        ),
    ]
    drift = [
        f"rank {r.rank}: " + (
            "trainer logprobs differ from rank 0's"
            if not torch.equal(flat(r.trainer_logprobs), flat(r0.trainer_logprobs))
            else f"{sum(r.param_checksums[n] != v for n, v in r0.param_checksums.items())} weights differ from rank 0's"
        )
        for r in results[1:]
        if not torch.equal(flat(r.trainer_logprobs), flat(r0.trainer_logprobs)) or r.param_checksums != r0.param_checksums
    ]
    out.append(
        CheckResult("tp_ranks_agree", True, f"{tp} ranks hold identical logprobs and full weights")
        if not drift
        else CheckResult(
            "tp_ranks_agree", False,
            "Ranks disagree: " + "; ".join(drift) + ". Replicated outputs and full weights must be "
            "bitwise equal on every rank; a drift means a gradient of a replicated weight was not "
            "reduced over the TP group (e.g. q_norm/k_norm, which see only local heads).",
        )
    )
    return out
