"""Probes of the native generator that the checks ask for through the protocol: one decode step
from a fixed state (graph, compiled or eager), and the time of one bare decode step."""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from titan_conformance.generator.sampling import all_logprobs, gumbel_noise, sampling_tensors
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


@torch.no_grad()
def probe_decode(gen, batch: int, how: str, prompt_len: int = 7, seed: int = 0) -> DecodeProbe:
    """One decode step from a fixed state (deterministic prompts prefilled, then one decode at
    temperature 1 with nothing truncated, through the sampler the generator is built with), run `how`: "graph" (replay at the padded size), "compiled" (the same compiled
    step, no graph) or "eager" (compile bypassed)."""
    rng = torch.Generator(device=gen.device).manual_seed(seed)
    vocab = gen.vocab_size
    prompts = torch.randint(0, vocab, (batch, prompt_len), generator=rng, device=gen.device).tolist()
    logits, lengths = gen.prefill(prompts)
    tokens = logits.argmax(-1, keepdim=True)
    noise = gumbel_noise((batch, vocab), rng)
    args = (tokens, lengths.unsqueeze(1).clone(), noise, *sampling_tensors(SamplingSpec(), gen.device))
    if how == "graph" or how == "compiled" and batch not in gen.graphs:
        sampled, logp, all_logp = gen.run_decode(*args[:3], args[3:], use_graph=how == "graph", want_all=True)
    else:
        if how == "compiled":
            # The same compiled step on the graph's own input buffers: same addresses and
            # alignment, so the same kernels are chosen; only the graph itself differs.
            for buffer, value in zip(gen.graphs[batch].inputs, args):
                buffer.copy_(value)
            args = gen.graphs[batch].inputs
        with torch.compiler.set_stance("force_eager") if how == "eager" else contextlib.nullcontext():
            sampled, logp, step_logits = gen.decode_step(*args)
        all_logp = all_logprobs(step_logits, args[3])
    return DecodeProbe(all_logp.cpu(), sampled.cpu(), logp.float().cpu(), noise.cpu())
