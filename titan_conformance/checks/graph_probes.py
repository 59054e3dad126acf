"""FULL CUDA-graph equivalence by decode probes (capability `decode_probes`), for the failure classes
reported from the field: garbage at large capture sizes, a padded row poisoning later requests
through the cache, a size that differs only after other sizes ran on the same engine.

Every capture size, the largest included, is probed in a seeded shuffled order (the largest first);
at each, a batch
that pads up to it replays its graph first, then the full batch replays the same graph and is held
to the same compiled step without a graph (outputs and the keys/values it wrote, exactly) and to
eager (within tolerance). Each probe decodes several consecutive steps of distinct prompts of
different lengths, and any cache slot it wrote outside its real rows' own and the scratch slot
fails. Each size's graph must have been captured once over the whole run, these probes included.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from titan_conformance.checks.cudagraphs import SAMPLER_MAX_ABS, padded_batch, recapture_cause, sampler_errors
from titan_conformance.checks.result import CheckResult
from titan_conformance.profile import Profile
from titan_conformance.protocol import ConformanceSystem, DecodeProbe

WHERE_TO_LOOK = {
    "replay": "A replay that differs from the compiled step it captured reads state the graph did not capture "
    "as an input: a buffer reallocated after capture, a value read on the host at capture, or memory another "
    "size's replay left in the shared pool; look at what the decode step reads besides its static inputs "
    "(generator/capture.py, NativeGenerator.fill_graph_inputs).",
    "stray": "Slots written outside the real rows' own are padding (or stale rows of a static input) writing "
    "keys and values where a real request reads them, now or once that row serves another request; padded rows "
    "must map to the scratch slot, and every row of a graph's static inputs must be refilled before each replay "
    "(NativeGenerator.padded_slots, fill_graph_inputs).",
    "padded": "Real rows of a padded batch that differ from eager, or a full batch that goes wrong right after a "
    "padded one replayed its graph, mean padding reaches real rows (a slot mapping, a reduction over the batch, "
    "state left in the graph's buffers); compare the padded rows' inputs and slots with the real rows'.",
    "eager": "Replay that matches the compiled step but not eager is a compile-level difference at that batch "
    "size (a kernel chosen by batch size, a specialization): probe the compiled step without a graph there.",
    "sampler": "A captured sampler that misses argmax(logprob + noise), or reports another logprob, lost its "
    "noise or temperature at capture (generator/sampling.py).",
    "recapture": "",  # its cause says where to look
}


@dataclass
class Findings:
    """Causes of failure, each of a class in `WHERE_TO_LOOK`, and the metrics per batch probed."""

    causes: list[tuple[str, str]] = field(default_factory=list)
    per_size: dict = field(default_factory=dict)

    def add(self, kind: str, cause: str) -> None:
        self.causes.append((kind, cause))


def probe_order(sizes: list[int], seed: int) -> list[int]:
    """The largest capture size, then the others shuffled by `seed`: every other size replays after
    a larger one has run (what a larger replay leaves behind is what a smaller one can read), and
    the order among them, where a bug that needs one size before another hides, changes with the seed."""
    rest = sorted(sizes)[:-1]
    random.Random(seed).shuffle(rest)
    return sorted(sizes)[-1:] + rest


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _stray(probe: DecodeProbe) -> str:
    shown = ", ".join(f"row {r} pos {p}" for r, p in probe.stray_slots[:4])
    count = len(probe.stray_slots)
    return f"{count} cache slot{'s' if count > 1 else ''} outside its real rows' own ({shown})"


def _judge_size(found: Findings, size: int, probes: dict[str, DecodeProbe], after: int | None, profile: Profile) -> None:
    graph, compiled, eager = probes["graph"], probes["compiled"], probes["eager"]
    tol, replay_tol = profile.tolerance.max_abs, profile.cudagraph.replay_max_abs
    shortfall, logprob_err = sampler_errors(graph)
    row = {
        "graph_vs_compiled_max_abs": _max_abs(graph.logprobs, compiled.logprobs),
        "graph_vs_eager_max_abs": _max_abs(graph.logprobs, eager.logprobs),
        "kv_graph_vs_compiled_max_abs": _max_abs(graph.kv_written, compiled.kv_written),
        "tokens_match_compiled": bool(torch.equal(graph.tokens, compiled.tokens)),
        "sampler_argmax_shortfall": shortfall, "sampler_logprob_max_abs": logprob_err,
        "finite": bool(torch.isfinite(graph.logprobs).all()),
        "stray_slots": len(graph.stray_slots), "steps": graph.logprobs.shape[0], "after_padded": after,
    }
    found.per_size[size] = row
    where = f"size {size}" + (f" (right after a padded batch of {after} replayed its graph)" if after else "")
    bound = "must be exact" if replay_tol == 0 else f"allowed {replay_tol:.1e}"
    if not row["finite"]:
        found.add("padded" if after else "replay", f"{where}: replay produced NaN/inf")
    if not row["tokens_match_compiled"]:
        found.add("replay", f"{where}: replay sampled other tokens than the same compiled step run without a graph")
    if row["graph_vs_compiled_max_abs"] > replay_tol:
        found.add("replay", f"{where}: replay differs from the same compiled step run without a graph by "
                  f"{row['graph_vs_compiled_max_abs']:.3e} ({bound})")
    if row["kv_graph_vs_compiled_max_abs"] > replay_tol:
        found.add("replay", f"{where}: the keys/values replay wrote differ from those the compiled step wrote by "
                  f"{row['kv_graph_vs_compiled_max_abs']:.3e} ({bound})")
    if row["graph_vs_eager_max_abs"] > tol:
        found.add("padded" if after and row["graph_vs_compiled_max_abs"] > replay_tol else "eager",
                  f"{where}: replay differs from eager by {row['graph_vs_eager_max_abs']:.3e} > {tol:.1e}")
    if max(shortfall, logprob_err) > SAMPLER_MAX_ABS:
        found.add("sampler", f"size {size}: the captured sampler is wrong: its tokens fall short of argmax(logprob + "
                  f"noise) by {shortfall:.3e} and its token logprobs are off by {logprob_err:.3e} "
                  f"(allowed {SAMPLER_MAX_ABS:.0e})")
    for how in ("graph", "compiled"):
        if probes[how].stray_slots:
            found.add("stray", f"size {size}: the {how} step wrote {_stray(probes[how])}")


def _judge_padded(found: Findings, batch: int, size: int, graph: DecodeProbe, eager: DecodeProbe, profile: Profile) -> None:
    tol = profile.tolerance.max_abs
    diff, finite = _max_abs(graph.logprobs, eager.logprobs), bool(torch.isfinite(graph.logprobs).all())
    found.per_size[f"{batch} (padded)"] = {"graph_vs_eager_max_abs": diff, "finite": finite, "padded_to": size,
                                           "stray_slots": len(graph.stray_slots)}
    if diff > tol or not finite:
        found.add("padded", f"batch {batch} padded to {size}: real rows differ from eager by {diff:.3e} > {tol:.1e}"
                  f"{'' if finite else ' or are NaN/inf'} (padding leaks into real rows)")
    if graph.stray_slots:
        found.add("stray", f"batch {batch} padded to {size}: the replay wrote {_stray(graph)}")


def check_graph_equivalence(system: ConformanceSystem, profile: Profile) -> CheckResult:
    captured = system.cudagraph_sizes().captured
    if not captured:
        return CheckResult("cudagraph_equivalence", False, "The generator holds no captured graph, so no replay was "
                           "probed: see the capture-size check for the sizes it should hold.", {"per_size": {}})
    order = probe_order(captured, profile.seed)
    found = Findings()
    for size in order:
        pad = padded_batch(size, captured)
        padded_graph = system.probe_decode(pad, "graph") if pad else None
        probes = {how: system.probe_decode(size, how) for how in ("graph", "compiled", "eager")}
        _judge_size(found, size, probes, pad, profile)
        if pad:
            _judge_padded(found, pad, size, padded_graph, system.probe_decode(pad, "eager"), profile)
    sizes = system.cudagraph_sizes()  # after the probes: a probe that re-captured counts too
    if cause := recapture_cause(sizes):
        found.add("recapture", cause)
    metrics = {
        "per_size": {k: found.per_size[k] for k in sorted(found.per_size, key=lambda k: int(str(k).split()[0]))},
        "probe_order": order, "probe_order_seed": profile.seed, "captures": sizes.captures or None,
    }
    limits = {"max_abs": profile.tolerance.max_abs, "replay_max_abs": profile.cudagraph.replay_max_abs,
              "sampler_max_abs": SAMPLER_MAX_ABS}
    padded = len(found.per_size) - len(captured)
    if not found.causes:
        return CheckResult(
            "cudagraph_equivalence", True,
            f"replay matches at {len(captured)} capture sizes and {padded} padded batches before them, probed in "
            f"order {order} (seed {profile.seed}), each graph captured once", metrics, limits,
        )
    kinds = dict.fromkeys(kind for kind, _ in found.causes)
    return CheckResult(
        "cudagraph_equivalence", False,
        f"FULL CUDA-graph replay is not equivalent (sizes probed in order {order}, seed {profile.seed}): "
        + "; ".join(cause for _, cause in found.causes) + ". " + " ".join(WHERE_TO_LOOK[k] for k in kinds if WHERE_TO_LOOK[k]),
        metrics, limits,
    )
