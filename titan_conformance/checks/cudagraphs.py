"""CUDA-graph checks: the captured set against the policy (each size captured once), every decode
step of the run replaying its graph, the captured sampler's errors, and FULL replay against eager
through whole rollouts where the generator runs no decode step alone (vLLM's engine). The decode
probes' equivalence check is `graph_probes.py`."""

from __future__ import annotations

import math

from titan_conformance.checks.result import CheckResult
from titan_conformance.profile import Profile
from titan_conformance.protocol import CaptureSizes, Completion, ConformanceSystem, DecodeProbe, StepRecord


def recapture_cause(sizes: CaptureSizes) -> str:
    """Why the sizes' graphs were not each captured once since build ("" if they were, or not counted)."""
    again = {size: n for size, n in sorted(sizes.captures.items()) if n > 1}
    if not again:
        return ""
    counts = ", ".join(f"size {s} {n} times" for s, n in again.items())
    return (f"graphs were captured more than once since the system was built ({counts}; each size once, at "
            "startup): something called the generator's capture after startup (a weight sync, a cache reset, a "
            "config change), so the run replayed graphs its startup never measured; find that second caller")


def capture_set_verdict(sizes: CaptureSizes, asked_mode: str = "") -> CheckResult:
    """The generator captured exactly the sizes its capture-size policy yields, each once (where it
    counts captures), and (where both are known) runs in the cudagraph mode the profile asks for: an
    engine can quietly run FULL as FULL_DECODE_ONLY, PIECEWISE or NONE for an attention backend that
    cannot be captured whole."""
    policy, captured = list(sizes.policy), list(sizes.captured)
    missing, extra = sorted(set(policy) - set(captured)), sorted(set(captured) - set(policy))
    metrics = {"policy": policy, "captured": captured, "mode": sizes.mode, "asked_mode": asked_mode,
               "captures": dict(sizes.captures) or None}
    causes = []
    if again := recapture_cause(sizes):
        causes.append(again)
    if asked_mode and sizes.mode and sizes.mode != asked_mode:
        causes.append(f"the generator's engine runs cudagraph mode {sizes.mode} where the profile asks for {asked_mode}")
    if missing or extra:
        causes.append(
            f"captured sizes {captured} differ from the capture-size policy {policy}: missing {missing}, extra "
            f"{extra}. A batch at a missing size runs padded to a larger graph (or without one)"
        )
    if not causes:
        mode = f" in mode {sizes.mode}" if sizes.mode else ""
        return CheckResult("capture_sizes", True, f"captured exactly the policy's {len(policy)} sizes {policy}{mode}", metrics)
    message = "; ".join(causes)
    return CheckResult("capture_sizes", False, message[0].upper() + message[1:] + ".", metrics)


def capture_policy_verdict(policy: list[int], max_num_seqs: int) -> CheckResult:
    """The policy graphs the batch every GRPO step decodes: max_num_seqs = prompts_per_step x n must
    be a capture size of its own (the seed PR derived the sizes from it), or every decode step pads
    up to a larger graph or, above the largest, runs without one."""
    metrics = {"policy": policy, "max_num_seqs": max_num_seqs}
    if max_num_seqs in policy:
        return CheckResult("capture_policy", True, f"the policy {policy} includes max_num_seqs = {max_num_seqs}", metrics)
    larger = [s for s in policy if s > max_num_seqs]
    fate = f"pads every step's {max_num_seqs} rows up to {larger[0]}" if larger else "runs every decode step without a graph"
    return CheckResult(
        "capture_policy", False,
        f"The capture-size policy {policy} leaves out max_num_seqs = {max_num_seqs} (prompts_per_step x n): the "
        f"generator {fate}. Derive the sizes from max_num_seqs (powers of 2 up to it, plus it).",
        metrics,
    )


def graph_replay_verdict(records: list[StepRecord], captured: list[int]) -> CheckResult | str:
    """Over the run's steps: every decode step whose batch has a captured size replayed a graph.
    Captured graphs that the decode loop never replays pass every equivalence probe while the run
    measures none of them. A reason to skip when the generator does not count its decode steps."""
    steps = [(r.step, r.decode) for r in records if getattr(r, "decode", None) is not None]
    if not steps:
        return "the generator reports no decode steps or graph replays (GenerateStats) for the run's steps"
    largest = max(captured, default=0)
    eligible = sum(d.decode_steps for _, d in steps if d.batch <= largest)
    replays = sum(d.graph_replays for _, d in steps)
    short = [f"step {s}: {d.graph_replays} of {d.decode_steps} at batch {d.batch}" for s, d in steps
             if d.batch <= largest and d.graph_replays < d.decode_steps]
    metrics = {"decode_steps": sum(d.decode_steps for _, d in steps), "at_captured_sizes": eligible,
               "graph_replays": replays, "captured": captured}
    if not eligible:
        return CheckResult(
            "graph_replays", False,
            f"No decode step of the run's {len(steps)} steps ran at a batch within the captured sizes {captured}: "
            "the graphs were captured but the run never exercised them.", metrics,
        )
    if short:
        return CheckResult(
            "graph_replays", False,
            f"Decode steps ran without their captured FULL graph: {'; '.join(short[:5])} (replays / decode steps). "
            "The decode loop bypasses the graphs (graph use off, a padded size missing, a batch routed around "
            "them), so the run measured the eager or compiled step, not the graphs.", metrics,
        )
    return CheckResult("graph_replays", True, f"all {eligible} decode steps at captured sizes replayed a graph", metrics)


SAMPLER_MAX_ABS = 1e-4
"""fp32 rounding between the sampler's formulation (argmax of logits + noise, logit - logsumexp) and
the reference one over the step's log-softmax; a wrong sampler is off by far more (a skipped noise
term by ~1 per row, a wrong temperature by the logits' scale)."""


def sampler_errors(probe: DecodeProbe) -> tuple[float, float]:
    """(how far the sampled tokens fall short of maximizing logprob + noise, the largest error of
    their reported logprobs against the log-softmax), over the rows of a `DecodeProbe`."""
    perturbed = probe.logprobs.double() + probe.noise.double()
    chosen = probe.tokens.unsqueeze(-1)
    shortfall = (perturbed.max(-1).values - perturbed.gather(-1, chosen).squeeze(-1)).max()
    logprob_err = (probe.token_logprobs.double() - probe.logprobs.double().gather(-1, chosen).squeeze(-1)).abs().max()
    return float(shortfall), float(logprob_err)


def padded_batch(size: int, sizes: list[int]) -> int | None:
    """A batch that pads up to capture size `size`: halfway from the next smaller capture size (or
    0); None where no batch lies between them."""
    below = max((s for s in sizes if s < size), default=0)
    return (below + size) // 2 if size - below > 1 else None


ROLLOUT_SEED = 7
"""Seed of the rollouts the engine-level equivalence check samples, graphs on and off alike."""


def _common_prefix_diffs(graph: list[Completion], eager: list[Completion]) -> tuple[list[float], int]:
    """|graph - eager| logprob of every token both rollouts sampled alike (each sequence up to
    where their tokens part), and how many sequences parted."""
    diffs, parted = [], 0
    for g, e in zip(graph, eager):
        same = 0
        while same < min(len(g.token_ids), len(e.token_ids)) and g.token_ids[same] == e.token_ids[same]:
            same += 1
        parted += g.token_ids != e.token_ids
        diffs += [abs(a - b) for a, b in zip(g.logprobs[:same], e.logprobs[:same])]
    return diffs, parted


def check_rollout_graph_equivalence(system: ConformanceSystem, profile: Profile) -> CheckResult:
    """FULL replay against eager where the generator runs no decode step alone (vLLM's engine): the
    same rollout of `batch` prompts with the engine's graphs and with them bypassed, at every capture
    size and one padded batch between each pair; sampled logprob against sampled logprob over the
    tokens both sampled alike. A rollout pair that compared nothing, a graph run that replayed no
    graph or a bypassed one that did, fails."""
    tol = profile.tolerance.max_abs
    captured = system.cudagraph_sizes().captured
    per_batch, causes = {}, []
    padded = [pad for size in captured[1:] if (pad := padded_batch(size, captured))]  # between neighbouring sizes
    for batch in sorted(set(captured) | set(padded)):
        problems = system.task.validation_set(batch)
        runs = {}
        for graphs in (True, False):
            completions = system.rollout(problems, seed=ROLLOUT_SEED, n=1, graphs=graphs)
            runs[graphs] = (completions, system.last_decode)
        (graph, graph_stats), (eager, eager_stats) = runs[True], runs[False]
        diffs, parted = _common_prefix_diffs(graph, eager)
        row = {
            "compared_tokens": len(diffs), "max_abs": max(diffs, default=0.0),
            "mean_abs": sum(diffs) / len(diffs) if diffs else 0.0, "sequences_parted": parted,
            "graph_replays": graph_stats.graph_replays if graph_stats else None,
            "decode_steps": graph_stats.decode_steps if graph_stats else None,
            "bypassed_replays": eager_stats.graph_replays if eager_stats else None,
            "finite": all(math.isfinite(lp) for c in graph for lp in c.logprobs),
        }
        per_batch[batch if batch in captured else f"{batch} (padded)"] = row
        if not diffs:
            causes.append(f"batch {batch}: the two rollouts sampled no token alike, nothing was compared")
        if not row["graph_replays"]:
            causes.append(f"batch {batch}: the rollout with graphs replayed none ({row['decode_steps']} decode steps)")
        if row["bypassed_replays"] is None or row["bypassed_replays"] > 0:
            causes.append(f"batch {batch}: the rollout with graphs bypassed replayed {row['bypassed_replays']}")
        if not row["finite"]:
            causes.append(f"batch {batch}: replay produced NaN/inf logprobs")
        if row["max_abs"] > tol:
            causes.append(f"batch {batch}: sampled logprobs with graphs differ from without by {row['max_abs']:.3e} > {tol:.1e}")
    if not per_batch:
        causes.append("the generator holds no captured graph, so no rollout ran with one")
    metrics, limits = {"per_batch": per_batch}, {"max_abs": tol}
    if not causes:
        compared = sum(r["compared_tokens"] for r in per_batch.values())
        return CheckResult(
            "cudagraph_equivalence", True,
            f"rollouts with and without graphs match at {len(captured)} capture sizes and {len(per_batch) - len(captured)} "
            f"padded batches ({compared} tokens compared, max {max(r['max_abs'] for r in per_batch.values()):.3e})",
            metrics, limits,
        )
    return CheckResult("cudagraph_equivalence", False, "FULL CUDA-graph replay is not equivalent: " + "; ".join(causes) + ".", metrics, limits)
