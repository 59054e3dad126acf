"""Where trainer and generator part: on a failed parity verdict, the first probe point at which
their divergence exceeds the precision floor, with the suspects for that point.

Both sides run a few sequences through the `activations` capability (the trainer its training
forward, the generator its prefill over its KV cache, compiled as in the run), and so does an eager
copy of the model at the profile's dtype and at float64 (the oracle), with the trainer's weights. At
every probe point, in forward order, the divergence is mean |trainer - generator| in multiples of
that point's floor, mean |eager copy - oracle|: the distance that rounding alone puts there. The
first point past `tolerances.<dtype>.floor.localize` times its floor is named; everything before it
is within the floor, so the cause sits between the point before and that one.

Only a failed verdict is localized: a passing one never runs a probe.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from titan_conformance.checks.result import CheckResult
from titan_conformance.errors import ConformanceError
from titan_conformance.protocol.probe_points import block_point, describe_point, probe_points, split_point

SEQUENCES = 8
"""Sequences probed: enough tokens for a mean per point, few enough to cost little."""

ROLLOUT_SEED = 34
"""Of the fresh rollout probed where a check has no current failing tokens to hand."""
SIDES = ("trainer", "generator")

SUSPECTS = {
    "embedding": "the {side}'s embedding table (weights not synced, or synced from another step) and the token ids it is fed",
    "attn_norm": "the {side}'s attention input norm (eps, weight, the dtype it normalizes in) and whether this block's "
    "weights were synced",
    "q_norm": "the {side}'s q projection (weights, the split of a fused qkv) and q norm (eps, weight)",
    "k_norm": "the {side}'s k projection (weights, the split of a fused qkv) and k norm (eps, weight)",
    "q_rope": "the {side}'s RoPE (theta, scaling, position ids, the rotate-half layout)",
    "k_rope": "the {side}'s RoPE (theta, scaling, position ids, the rotate-half layout)",
    "attention": "the {side}'s attention op (causal masking, softmax scale, GQA head mapping, the KV cache's slots "
    "and contents)",
    "attn_residual": "the {side}'s attention output projection (o_proj weights, an all-reduce) and residual add",
    "mlp_norm": "the {side}'s MLP input norm (eps, weight)",
    "mlp": "the {side}'s MLP (gate/up/down weights, the split of a fused gate_up, the activation)",
    "block_output": "the {side}'s residual add after the MLP",
    "final_norm": "the {side}'s final norm (eps, weight)",
    "logits": "the {side}'s output projection (lm_head or the tied embedding, its sync) and any logit scale",
    "logprobs": "the temperature the {side} scores at and the dtype of its log-softmax",
    "sampled_logprobs": "the logprobs the {side} reports with its samples (tempered or not, processed or raw) and its "
    "decode path (KV-cache writes, decode positions, graph replay): its prefill agrees",
}
"""Probe point (inside a block: without the block) -> where to look when it is the first to diverge."""


def _mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().mean())


@dataclass
class PointDivergence:
    """One probe point, in multiples of its floor."""

    name: str
    pair: float
    """mean |trainer - generator| over the floor (inf where exactly one side is non-finite)."""
    trainer: float
    """mean |trainer - oracle| over the floor."""
    generator: float
    """mean |generator - oracle| over the floor."""
    floor: float
    """mean |eager copy at the profile's dtype - oracle| (at least half an ulp of the oracle's mean
    magnitude: an exact point, such as an embedding lookup, has floor 0)."""
    non_finite: tuple[str, ...] = ()
    """The sides (and "oracle") with NaN or inf at this point."""


def point_divergence(name: str, values: dict[str, torch.Tensor], dtype: torch.dtype) -> PointDivergence:
    """`values`: the point on trainer, generator, reference (eager at `dtype`) and oracle."""
    non_finite = tuple(k for k in (*SIDES, "oracle") if not torch.isfinite(values[k]).all())
    oracle = values["oracle"].double()
    half_ulp = torch.finfo(dtype).eps / 2 * float(oracle.abs().mean()) if torch.isfinite(oracle).all() else 0.0
    floor = max(_mean_abs(values["reference"], oracle), half_ulp)

    def ratio(a: torch.Tensor, b: torch.Tensor) -> float:
        d = _mean_abs(a, b)
        if math.isnan(d):
            return math.inf
        return d / floor if floor > 0 else (0.0 if d == 0 else math.inf)

    return PointDivergence(name, ratio(values["trainer"], values["generator"]), ratio(values["trainer"], oracle),
                           ratio(values["generator"], oracle), floor, non_finite)


@dataclass
class Localization:
    """The divergence at every probe point, and the first one past the factor."""

    points: list[PointDivergence]
    factor: float
    sequences: int
    seconds: float
    replay: dict[str, dict[int, float]]
    """Per side and block: mean |eager re-execution - compiled| of the block output over its floor,
    how far the points inside the block (from the re-execution) may be from what the compiled block
    computed."""

    @property
    def first(self) -> PointDivergence | None:
        return next((p for p in self.points if p.pair > self.factor or p.non_finite), None)

    def per_block(self) -> list[float]:
        """Per block, the largest divergence of its points (multiples of the floor)."""
        blocks: dict[int, float] = {}
        for p in self.points:
            layer, _ = split_point(p.name)
            if layer is not None:
                blocks[layer] = max(blocks.get(layer, 0.0), p.pair)
        return [blocks[i] for i in sorted(blocks)]

    def metrics(self) -> dict:
        first = self.first
        return {
            "first_point": first.name if first else None,
            "first_label": describe_point(first.name) if first else None,
            "factor": self.factor, "sequences": self.sequences, "seconds": self.seconds,
            "per_block": self.per_block(),
            "points": {p.name: {"pair": p.pair, "trainer": p.trainer, "generator": p.generator, "floor": p.floor,
                                **({"non_finite": list(p.non_finite)} if p.non_finite else {})} for p in self.points},
            "replay": self.replay,
        }

    def paragraph(self) -> str:
        """Where the two sides part and what to look at there."""
        probed = f"(probed {self.sequences} sequences in {self.seconds:.2f} s)"
        first = self.first
        if first is None:
            worst = max(self.points, key=lambda p: p.pair)
            return (f"No probe point of {self.sequences} sampled sequences diverges past {self.factor:g}x its precision "
                    f"floor (the largest: {describe_point(worst.name)}, {worst.pair:.2f}x) {probed}: the mismatch did not "
                    "show on the probe's sample.")
        where = describe_point(first.name)
        if "oracle" in first.non_finite:
            return (f"First non-finite values at {where}, on {', '.join(first.non_finite)}: the weights or the "
                    f"arithmetic at that point overflow whatever side computes it {probed}.")
        side = "generator" if first.generator >= first.trainer else "trainer"
        how = (f"non-finite on the {' and '.join(first.non_finite)} side" if first.non_finite else
               f"{first.pair:.3g}x the floor; the {side} is {getattr(first, side):.3g}x the floor from the float64 "
               f"oracle, the {'trainer' if side == 'generator' else 'generator'} "
               f"{getattr(first, 'trainer' if side == 'generator' else 'generator'):.3g}x")
        before = "everything before it within the floor" if self.points[0] is not first else "it is the first probe point"
        look = SUSPECTS[split_point(first.name)[1]].format(side=side)
        return f"First divergence at {where} ({how}); {before}: look at {look}{self._ungrounded(first, side)} {probed}."

    def _ungrounded(self, first: PointDivergence, side: str) -> str:
        """What to add where the named point is inside a block whose eager re-execution on `side` is
        not the compiled block within the factor (the compiled graph computes what its code does not)."""
        layer, point = split_point(first.name)
        off = self.replay.get(side, {}).get(layer, 0.0) if layer is not None and point != "block_output" else 0.0
        if off <= self.factor:
            return ""
        return (f", and at how block {layer} is compiled on the {side}: its compiled output is {off:.3g}x the floor from "
                "an eager run of the same block, so the points inside it (taken from that eager run) are approximate")


def localize(system, profile, completions: list | None = None) -> Localization:
    """Probes both sides, the eager copy and the oracle on `completions` (at most SEQUENCES of them, and no
    more than one forward of each side holds;
    None: a fresh rollout of the system as it is now, which the generator's sampled logprobs need to
    be current)."""
    start = time.perf_counter()
    count = min(SEQUENCES, profile.rollouts_per_step, profile.max_num_seqs)  # one forward of each side holds them
    if completions is None:  # one sample of as many prompts: a rollout of a step's whole batch would cost more than the probes
        completions = system.rollout(system.task.validation_set(count), seed=ROLLOUT_SEED, n=1)
    completions = completions[:count]
    dtype = getattr(torch, profile.model.dtype)
    runs = {side: system.activations(completions, side) for side in SIDES}
    runs["reference"] = system.activations(completions, "reference", dtype)
    runs["oracle"] = system.activations(completions, "reference", torch.float64)
    layers = 1 + max((split_point(name)[0] for name in runs["trainer"].points if name.startswith("blocks.")), default=-1)
    expected = probe_points(layers)
    for side, run in runs.items():
        if missing := [p for p in expected if p not in run.points]:
            raise ConformanceError(f"the provider's activations on the {side} side lack {', '.join(missing[:3])} "
                                   f"({len(missing)} of the protocol's probe points)")
    points = [point_divergence(name, {k: run.points[name] for k, run in runs.items()}, dtype) for name in expected]
    floors = {p.name: p.floor for p in points}
    replay = {side: {layer: off / floors[block_point(layer, "block_output")] for layer, off in runs[side].replay_mean_abs.items()}
              for side in SIDES}
    return Localization(points, profile.tolerance.floor.localize, len(completions), time.perf_counter() - start, replay)


def worst_sequences(completions: list, diff: torch.Tensor, count: int = SEQUENCES) -> list:
    """The `count` completions holding the largest |diff| (flat, completion after completion)."""
    sizes = [len(c.token_ids) for c in completions]
    worst = [float(part.abs().nan_to_num(math.inf).max()) if part.numel() else 0.0 for part in diff.split(sizes)]
    order = sorted(range(len(completions)), key=lambda i: -worst[i])[:count]
    return [completions[i] for i in sorted(order)]


def localized(result: CheckResult, system, profile, hint: str | None, completions: list | None = None) -> CheckResult:
    """A failed parity verdict with where the two sides part (`localize`) said after it, in place of
    its list of suspects `hint` once a point is named (None: the message keeps all it says);
    `result` unchanged when it passed or the system cannot be probed (`activations`)."""
    if result.passed or system is None:
        return result
    try:
        if "activations" not in system.capabilities:
            return result
        loc = localize(system, profile, completions)
    except Exception as e:  # the verdict stands: a broken probe or a closed system costs only its diagnosis
        detail = str(e) if isinstance(e, ConformanceError) else f"{type(e).__name__}: {e}"
        result.message += f" (Where the two sides part could not be measured: {detail}.)"
        return result
    result.metrics["localization"] = loc.metrics()
    message = result.message.replace(hint, "").rstrip() if hint and loc.first is not None else result.message
    result.message = f"{message} {loc.paragraph()}"
    return result
