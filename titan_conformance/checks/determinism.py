"""Generator determinism at production concurrency: the same rollout twice, and a sequence among
other neighbours.

vLLM #51187: identical requests at ~44 co-resident sequences gave three different logprob sets in a
batch-invariant build, while a bs=1 vs bs=N test passed. Two checks, each over rollouts of the
generator's own sampling path (prefill + decode) at `max_num_seqs` rows, one prompt a row:

- repeat: the same prompts rolled out twice with the same seed (the rollout path a GRPO step takes,
  so the same noise) give the same tokens and logprobs, row by row;
- neighbours: probe sequences sampled with per-sequence noise (`sequence_noise`: a function of the
  seed and the sequence, not of its row) are rolled out among other prompts, in another order, and
  in a smaller batch that pads to another capture size; each probe's tokens and logprobs are
  compared with its rollout in the first batch.

What is compared: each row's sampled tokens, and the logprobs of the tokens both rollouts share
(up to the first token where they part: after it the rows hold different sequences). Where the
profile declares the generator batch-invariant (`generator.batch_invariant`) or asks for bitwise
parity, any difference fails, a parted token included; otherwise logprobs may differ by
`tolerances.<dtype>.batch_invariance_max_abs`, and a parted token (a near tie that such a difference
can flip) is counted and named, not failed. A NaN or inf logprob fails; a comparison that compared
no token fails, and so do fewer than `tolerances.min_tokens` in all.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field

import torch

from titan_conformance.checks.result import CheckResult
from titan_conformance.checks.rollouts import MAX_BATCHES
from titan_conformance.profile import padded_size
from titan_conformance.protocol import Completion

PLACES_TO_LOOK = (
    "Where to look: a kernel whose reduction order depends on the batch (split-K or a tile chosen by "
    "the batch size, a reduction over the flattened batch or across rows, attention that reads other "
    "sequences' rows or pages), atomics (accumulation in arrival order), or state carried between calls "
    "(a step counter, a workspace or a kernel chosen by the call count, a stale buffer)."
)


@dataclass
class Comparison:
    """The same sequences in two rollouts: `rows` pairs each one's row in `first` and in `second`."""

    label: str
    """What differs between the two, e.g. "other neighbours"."""
    first: list[Completion]
    second: list[Completion]
    rows: list[tuple[int, int]]
    compared: int = field(default=0, init=False)
    """Tokens whose logprobs were compared (measured at construction, as are the fields below)."""
    max_abs: float = field(default=0.0, init=False)
    where: str = field(default="", init=False)
    """Row pair and token of the largest difference."""
    differing: int = field(default=0, init=False)
    """Compared tokens whose logprobs differ at all."""
    parted: list[str] = field(default_factory=list, init=False)
    """Each row pair whose tokens part, where and into what."""
    non_finite: list[str] = field(default_factory=list, init=False)
    """Each NaN or inf logprob in either rollout, where."""

    def __post_init__(self) -> None:
        for i, j in self.rows:
            a, b = self.first[i], self.second[j]
            place = f"row {i} of the first batch, row {j} of the second"
            common = next((t for t, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y),
                          min(len(a.token_ids), len(b.token_ids)))
            if common < max(len(a.token_ids), len(b.token_ids)):
                self.parted.append(f"{place}, token {common}: {_token(a, common)} vs {_token(b, common)}")
            for side, c in (("first", a), ("second", b)):
                bad = [t for t, lp in enumerate(c.logprobs) if not math.isfinite(lp)]
                if bad:
                    self.non_finite.append(f"{place}, token {bad[0]} of the {side} ({c.logprobs[bad[0]]})")
            diff = (torch.tensor(a.logprobs[:common], dtype=torch.float64)
                    - torch.tensor(b.logprobs[:common], dtype=torch.float64)).abs()
            self.compared += common
            self.differing += int((diff != 0).sum())
            if common and float(diff.max()) > self.max_abs:
                t = int(diff.argmax())
                self.max_abs, self.where = float(diff[t]), f"{place}, token {t}"


def _token(c: Completion, t: int) -> str:
    return str(c.token_ids[t]) if t < len(c.token_ids) else "ended"


def determinism_verdict(name: str, what: str, comparisons: list[Comparison], profile, hint: str) -> CheckResult:
    """One verdict over the comparisons: bitwise where the generator is declared batch-invariant (or
    the profile is bitwise), else within the batch-invariance tolerance."""
    bitwise = profile.generator.batch_invariant or profile.tolerances.bitwise
    limit = 0.0 if bitwise else profile.tolerance.batch_invariance_max_abs
    min_tokens = profile.tolerances.min_tokens
    metrics = {
        "tokens": sum(c.compared for c in comparisons),
        "max_abs": max(c.max_abs for c in comparisons),
        "parted_rows": sum(len(c.parted) for c in comparisons),
        "non_finite": sum(len(c.non_finite) for c in comparisons),
        "comparisons": {c.label: {"tokens": c.compared, "max_abs": c.max_abs, "differing": c.differing,
                                  "parted_rows": len(c.parted), "rows": len(c.rows)} for c in comparisons},
    }
    limits = {"max_abs": limit, "bitwise": bitwise, "min_tokens": min_tokens}
    mode = ("bitwise equality (generator.batch_invariant or tolerances.bitwise)" if bitwise
            else f"max |diff| {limit:.1e} (tolerances.{profile.model.dtype}.batch_invariance_max_abs)")
    problems = []
    for c in comparisons:
        if c.non_finite:
            problems.append(f"{c.label}: {len(c.non_finite)} NaN or inf logprobs (first at {c.non_finite[0]}); a "
                            "non-finite logprob fails whatever the tolerance")
        elif not c.compared:
            problems.append(f"{c.label}: no token was compared ({len(c.rows)} rows, all empty or parted at their "
                            "first token)")
        if c.max_abs > limit:
            problems.append(f"{c.label}: logprobs differ by up to {c.max_abs:.3e} at {c.where} ({c.differing} of "
                            f"{c.compared} tokens differ)")
        if bitwise and c.parted:
            problems.append(f"{c.label}: tokens part in {len(c.parted)} of {len(c.rows)} rows (first at {c.parted[0]})")
    if not problems and metrics["tokens"] < min_tokens:
        return CheckResult(name, False, f"{what}: only {metrics['tokens']} tokens were compared in all, fewer than "
                           f"the {min_tokens} a verdict needs (tolerances.min_tokens): the completions end too soon "
                           "(a model that samples EOS at once, or max_tokens too small).", metrics, limits)
    if problems:
        return CheckResult(name, False, f"{what}, held to {mode}: " + "; ".join(problems) + f". {hint} {PLACES_TO_LOOK}",
                           metrics, limits)
    parted = f", {metrics['parted_rows']} rows parted at a near tie" if metrics["parted_rows"] else ""
    return CheckResult(name, True, f"{what}: {mode} held over {metrics['tokens']} tokens (max |diff| "
                       f"{metrics['max_abs']:.3e}{parted})", metrics, limits)


def _seed(profile, salt: str) -> int:
    return zlib.crc32(f"{salt}-{profile.seed}".encode())


def check_repeat_determinism(system, profile) -> CheckResult:
    """The same max_num_seqs prompts rolled out twice with the same seed, row i against row i; more
    such batches (up to MAX_BATCHES) where completions end too soon for `tolerances.min_tokens`."""
    rng, seed, rows, comparisons = random.Random(_seed(profile, "repeat")), _seed(profile, "repeat-rollout"), [], []
    for batch in range(MAX_BATCHES):
        problems = system.task.sample(rng, profile.max_num_seqs)
        first, second = (system.rollout(problems, seed=seed + batch, n=1) for _ in range(2))
        rows = [(i, i) for i in range(len(problems))]
        comparisons.append(Comparison(f"repeat of batch {batch + 1}", first, second, rows))
        if sum(c.compared for c in comparisons) >= profile.tolerances.min_tokens:
            break
    return determinism_verdict(
        "generator_repeat", f"the same {len(rows)} co-resident sequences rolled out twice with the same seed",
        comparisons, profile,
        "The generator is not deterministic at this concurrency: the same batch with the same noise sampled "
        "other tokens or logprobs the second time, so something changed between the two rollouts.",
    )


def other_batch_size(max_num_seqs: int, sizes: list[int]) -> int:
    """A batch smaller than max_num_seqs that pads up to another capture size than max_num_seqs
    does, with padding rows (one more than the size below that one); with no sizes, about half."""
    own = padded_size(max_num_seqs, sizes) or max_num_seqs
    below = [s for s in sizes if s < min(own, max_num_seqs)]
    if not below:
        return max(1, max_num_seqs // 2 + 1) if max_num_seqs > 2 else 1
    return (below[-2] if len(below) > 1 else 0) + 1


def check_neighbour_invariance(system, profile) -> CheckResult:
    """Probe sequences (per-sequence noise) among other neighbours, in another order, and in a
    smaller batch padded to another capture size, each against the probes' first rollout at
    max_num_seqs rows."""
    rows = profile.max_num_seqs
    sizes = system.cudagraph_sizes() if "capture_policy" in system.capabilities else None
    small = other_batch_size(rows, sizes.policy if sizes else profile.capture_sizes)
    count = max(1, small - 1)  # the smaller batch keeps one neighbour; every other row probes
    drawn = system.task.sample(random.Random(_seed(profile, "neighbours")), 2 * rows - count)
    probes, first, second = drawn[:count], drawn[count:rows], drawn[rows:]
    seed = _seed(profile, "neighbours-rollout")

    def rollout(problems):
        return system.rollout(problems, seed=seed, n=1, sequence_noise=True)

    half = len(second) // 2
    batches = {  # label: (problems, the probes' rows)
        "other neighbours": (second[:half] + probes + second[half:], range(half, half + count)),
        "reversed order": ((probes + first)[::-1], range(rows - 1, rows - 1 - count, -1)),
    }
    padded = padded_size(small, sizes.captured) if sizes else None
    batches[f"a batch of {small} rows" + (f" (padded to the graph of {padded})" if padded not in (None, small) else "")] = (
        first[: small - count] + probes, range(small - count, small))
    reference = rollout(probes + first)
    comparisons = [Comparison(label, reference, rollout(problems), list(enumerate(probe_rows)))
                   for label, (problems, probe_rows) in batches.items()]
    return determinism_verdict(
        "generator_neighbours",
        f"{count} probe sequences (per-sequence noise) at rows 0-{count - 1} of {rows} vs among other neighbours",
        comparisons, profile,
        "A sequence's logprobs depend on what else is in the batch: its neighbours, its row or the batch size "
        "it runs (or is padded) at.",
    )
