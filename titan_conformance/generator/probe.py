"""Probes of the native generator that the checks ask for through the protocol: consecutive decode
steps from a fixed state (graph, compiled or eager) with the cache slots they wrote, and the time
of one bare decode step."""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from titan_conformance.generator.sampling import all_logprobs, gumbel_noise, sampling_tensors
from titan_conformance.model.attention import KVCacheAttention
from titan_conformance.profile import SamplingSpec
from titan_conformance.protocol import DecodeProbe
from titan_conformance.timing import synchronize


@torch.no_grad()
def time_decode_step(gen, batch: int, position: int, repeats: int = 5) -> float:
    """Median seconds of one bare decode step of `batch` rows at `position`, as `generate` runs one
    (a graph replay at the padded size where one was captured, else the step itself) with nothing
    around it: the reference a run's generate time per decode step is held to. The first run is not
    timed. Writes only slots at `position`, which a later generation writes again before it reads
    them."""
    position = min(position, gen.max_model_len - 1)
    tokens = torch.zeros(batch, 1, dtype=torch.long, device=gen.device)
    positions = torch.full((batch, 1), position, dtype=torch.long, device=gen.device)
    noise = torch.zeros(batch, gen.vocab_size, device=gen.device)
    knobs = sampling_tensors(gen.config.sampling, gen.device)
    replays, seconds = gen.replays, []
    for _ in range(repeats + 1):
        synchronize(gen.device)
        start = time.perf_counter()
        gen.run_decode(tokens, positions, noise, knobs)
        synchronize(gen.device)
        seconds.append(time.perf_counter() - start)
    gen.replays = replays  # a probe, not a decode step of the run
    return statistics.median(seconds[1:])


PROBE_STEPS = 3
"""Consecutive decode steps of a probe: each reads the keys and values the steps before it wrote."""
SHORTEST_PROMPT, PROMPT_SPREAD = 4, 9
"""Row i's prompt has SHORTEST_PROMPT + 7i mod PROMPT_SPREAD tokens: neighbouring rows differ in
length, so each decodes at its own positions (4..12 tokens, + PROBE_STEPS within any profile's
max_model_len)."""
CANARY = 0.71875
"""Written into the cache rows a probe's batch does not own before its decode steps: any other
value there afterwards was written by the steps (a bf16/fp16/fp32-exact constant no key is)."""


def kv_caches(gen) -> list[KVCacheAttention]:
    """The generator model's KV caches, one per layer (ours, or attached to torchtitan's blocks)."""
    return [m for m in gen.model.modules() if isinstance(m, KVCacheAttention)]


class CacheWatch:
    """Which cache slots the decode steps write: rows the batch does not own hold the canary, and
    the batch's own rows are kept as the prefill left them, so a write shows even where it
    stores the value the slot already held."""

    def __init__(self, caches: list[KVCacheAttention], batch: int) -> None:
        self.tensors = [t for c in caches for t in (c.k_cache, c.v_cache)]
        self.batch = batch
        for t in self.tensors:
            t[batch:].fill_(CANARY)
        self.kept = [t[:batch].clone() for t in self.tensors]

    def written(self) -> torch.Tensor:
        """[cache rows, L] bool: the slots any layer's keys or values changed in."""
        out = None
        for t, kept in zip(self.tensors, self.kept):
            changed = torch.cat([t[: self.batch] != kept, t[self.batch :] != CANARY]).flatten(2).any(-1)
            out = changed if out is None else out | changed
        return out


def _decode(gen, how: str, tokens, positions, noise, knobs):
    """One decode step of the batch, `how`: (sampled tokens, their logprobs, all logprobs [B, V])."""
    batch = tokens.shape[0]
    if how == "graph" or how == "compiled" and batch not in gen.graphs:
        return gen.run_decode(tokens, positions, noise, knobs, use_graph=how == "graph", want_all=True)
    args = (tokens, positions, noise, *knobs)
    if how == "compiled":
        # The same compiled step on the graph's own input buffers: same addresses and alignment,
        # so the same kernels are chosen; only the graph itself differs.
        args = gen.fill_graph_inputs(batch, tokens, positions, noise, knobs).inputs
    with torch.compiler.set_stance("force_eager") if how == "eager" else contextlib.nullcontext():
        sampled, logp, logits = gen.decode_step(*args)
    return sampled, logp, all_logprobs(logits, knobs[0])


@torch.no_grad()
def probe_decode(gen, batch: int, how: str, steps: int = PROBE_STEPS, seed: int = 0) -> DecodeProbe:
    """`steps` decode steps from a fixed state (`DecodeProbe`), run `how`: "graph" (replays at the
    padded size), "compiled" (the same compiled step, no graph) or "eager" (compile bypassed)."""
    rng = torch.Generator(device=gen.device).manual_seed(seed)
    vocab, device = gen.vocab_size, gen.device
    lengths = [SHORTEST_PROMPT + 7 * i % PROMPT_SPREAD for i in range(batch)]
    drawn = torch.randint(1, vocab, (batch, max(lengths)), generator=rng, device=device).tolist()
    gen.prefill([row[:n] for row, n in zip(drawn, lengths)])  # token 0 (padding's) never in a prompt
    fed = torch.randint(1, vocab, (steps, batch, 1), generator=rng, device=device)
    noise = torch.stack([gumbel_noise((batch, vocab), rng) for _ in range(steps)])
    knobs = sampling_tensors(SamplingSpec(), device)  # temperature 1, nothing truncated
    caches = kv_caches(gen)
    watch = CacheWatch(caches, batch)
    start = torch.tensor(lengths, device=device)
    out = [_decode(gen, how, fed[s], (start + s).unsqueeze(1), noise[s], knobs) for s in range(steps)]
    sampled, logp, all_logp = (torch.stack(parts) for parts in zip(*out))

    written = watch.written()
    rows = torch.arange(batch, device=device).repeat(steps)
    positions = (start.unsqueeze(0) + torch.arange(steps, device=device).unsqueeze(1)).flatten()
    written[rows, positions] = False  # each real row's own slot of each step
    written[gen.scratch_row] = False
    kv = torch.stack([torch.stack([c.k_cache[rows, positions], c.v_cache[rows, positions]]) for c in caches])
    return DecodeProbe(
        all_logp.cpu(), sampled.cpu(), logp.float().cpu(), noise.cpu(),
        kv_written=kv.unflatten(2, (steps, batch)).cpu(),
        stray_slots=[(r, p) for r, p in written.nonzero().tolist()],
    )
