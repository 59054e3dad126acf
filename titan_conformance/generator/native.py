"""The native generator: a model over a static KV cache, batched prefill + decode, FULL graphs.

The decode step (every compiled block, the final norm, lm_head and sampling) is one shape-static
function of (tokens, positions, noise, sampling knobs). On CUDA, in a FULL mode, it is captured as one
CUDA graph per capture size (`capture.py`); a batch is padded up to the next size (its padded rows
write their keys and values to a scratch row of the cache) and a batch above the largest runs
without a graph. `qwen3.py` builds one over our Qwen3; the torchtitan provider
builds one over torchtitan's.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable

import torch
from torch import nn

from titan_conformance.compilation.warm_start import WarmStart
from titan_conformance.errors import ConformanceError
from titan_conformance.generator.base import GeneratorConfig
from titan_conformance.generator.capture import CapturedGraph, CaptureReport, capture_graphs
from titan_conformance.generator.sampling import all_logprobs, noise_stream, sample_tokens, sampling_tensors
from titan_conformance.model.qwen3 import detached_from_stack
from titan_conformance.profile import SamplingSpec, padded_size
from titan_conformance.protocol import Completion, GenerateStats
from titan_conformance.trainer.logprobs import logprobs_from_logits


class NativeGenerator:
    """Generates with a model's own code; weights arrive from the trainer in place.

    `model` already has its KV-cache inner attention (`config.cache_rows` rows of `max_model_len`
    slots) and its compiled blocks; `forward(tokens, positions, slots) -> logits` runs it on one
    flat row of N tokens ([1, N] each; logits [1, N, V]), every token with its cache slot.
    """

    EOS_CHECK_EVERY = 8
    """Decode steps between two host reads of whether every row has sampled EOS."""

    def __init__(
        self, model: nn.Module, *, vocab_size: int, config: GeneratorConfig,
        forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model, self.vocab_size, self.config = model, vocab_size, config
        self.max_num_seqs, self.max_model_len, self.device = config.max_num_seqs, config.max_model_len, config.device
        self.capture_sizes = sorted(config.captured_sizes)
        self._forward = forward or (lambda tokens, positions, slots: model(tokens, positions, cache_slots=slots))
        self.graphs: dict[int, CapturedGraph] = {}
        self.last_generate: GenerateStats | None = None
        """The decode steps and graph replays of the latest `generate`."""
        self.replays = 0
        """Graph replays so far (every `run_decode` that replayed one)."""
        self.captures: Counter[int] = Counter()
        """Graphs captured per size since build (`capture.capture_graphs`): a run captures each once."""
        self.scratch_row = config.scratch_row
        self.scratch_slot = config.scratch_row * self.max_model_len
        """Where every padding token writes its key and value (`GeneratorConfig.scratch_row`)."""
        self.warm_start: WarmStart | None = None
        """Background kernel compiles started at build; the first forward waits for them."""

    probes = frozenset({"decode_timing", "decode_probes", "graph_bypass", "activations"})
    lacks: dict[str, str] = {}
    startup: dict[str, float] = {}

    def captured_sizes(self) -> list[int]:
        return sorted(self.graphs)

    def capture_counts(self) -> dict[int, int]:
        return dict(self.captures)

    def time_decode_step(self, batch: int, position: int) -> float:
        from titan_conformance.generator.probe import time_decode_step

        return time_decode_step(self, batch, position)

    def cudagraph_mode(self) -> str:
        return self.config.cudagraph_mode.on(self.device).value

    def describe(self) -> dict[str, str]:
        return {}

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Weight sync: copies the trainer's tensors into the generator's in place (no rebuild, no
        recompile, no recapture: parameters are graph inputs at fixed addresses)."""
        params = dict(self.model.named_parameters())
        seen = set()
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in params:
                    raise ConformanceError(f"Weight sync sent {name!r}, which the generator's model lacks.")
                params[name].copy_(tensor)
                seen.add(name)
        if missing := sorted(set(params) - seen):
            raise ConformanceError(f"Weight sync did not send {missing[0]!r} ({len(missing)} missing).")
        if detached := detached_from_stack(self.model):
            raise ConformanceError(
                f"Weight sync wrote {detached}, which is no longer a view of its stacked q/k/v or gate/up "
                "weight, so the generator's GEMMs never see it. Something replaced the generator's "
                "parameters after fuse_projections (Module.to() to another dtype or device, deepcopy, "
                "load_state_dict(assign=True)): build the generator on its final device and dtype."
            )

    @torch.no_grad()
    def forward_step(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor | None = None) -> torch.Tensor:
        """Runs the blocks over [B, S] tokens at `positions` (row i in cache row i, or at `slots`
        [1, B * S] where given), writing the KV cache; returns logits [B, S, V].

        The blocks see one flat row of B * S tokens, as vLLM's do: a prefill and a decode step are
        then one shape class, so the block compiles once for both. A single token gets a padding
        token (the scratch slot, position 0): Dynamo specializes a size of 1, which would be one
        more compile."""
        self.wait_warm_start()
        bsz, seqlen = tokens.shape
        flat = [tokens.reshape(1, -1), positions.reshape(1, -1), self.cache_slots(positions) if slots is None else slots]
        if bsz * seqlen == 1:  # (filled on the device: a host copy cannot be graph-captured)
            flat = [torch.cat([t, torch.full_like(t, pad)], 1) for t, pad in zip(flat, (0, 0, self.scratch_slot))]
        return self._forward(*flat)[0, : bsz * seqlen].view(bsz, seqlen, -1)

    def cache_slots(self, positions: torch.Tensor) -> torch.Tensor:
        """[B, S] positions -> [1, B * S] cache slots, row * max_model_len + position with row i of
        the batch in cache row i (vLLM's slot mapping); a new tensor, since a view among the
        compiled block's inputs would guard on its base. Positions must be < max_model_len (one past
        would land in the next row; `generate` checks lengths up front)."""
        seqlen = positions.shape[1]
        rows = torch.arange(positions.numel(), device=positions.device).div(seqlen, rounding_mode="floor")
        return (rows * self.max_model_len).view(1, -1) + positions.reshape(1, -1)

    def wait_warm_start(self) -> None:
        """Waits for the warm start if one is running: before the first forward (so the compile
        phase counts whatever is left of it), before anything else compiles, and at close."""
        if self.warm_start is not None:
            self.warm_start, warm_start = None, self.warm_start
            warm_start.wait()

    def close(self) -> None:
        """Waits for a warm start still running (a system whose startup failed before the first
        forward); the graphs, cache and weights go with the object."""
        self.wait_warm_start()

    def decode_step(self, tokens, positions, noise, divisor, noise_scale, top_p, top_k, slots=None):
        """The whole decode step; what a FULL graph captures: (tokens, their logprobs, logits).
        (divisor, noise_scale, top_p, top_k): `sampling.sampling_tensors` of the call's spec, sampled
        as the generator's spec is built to (`GeneratorConfig.sampling`). The logits are lm_head's
        own output, so returning them costs the graph nothing. `slots`
        [1, B]: each row's cache slot (a graph's static buffer, the padded rows' the scratch slot);
        None: every row is real, at `cache_slots(positions)`."""
        logits = self.forward_step(tokens, positions, slots)[:, -1]
        return *sample_tokens(logits, noise, (divisor, noise_scale, top_p, top_k), self.config.sampling), logits

    def capture(self) -> CaptureReport:
        """One FULL decode graph per capture size (`generator.capture`)."""
        return capture_graphs(self)

    def run_decode(self, tokens, positions, noise, knobs, use_graph: bool = True, want_all: bool = False):
        """One decode step for a batch of B rows: graph replay at the padded size when one was
        captured for it, else the step itself. Returns the B real rows: (tokens, their logprobs,
        all logprobs [B, V] when `want_all`, else None)."""
        bsz = tokens.shape[0]
        size = padded_size(bsz, self.capture_sizes) if use_graph and self.graphs else None
        if size is None:
            tokens_out, logp, logits = self.decode_step(tokens, positions, noise, *knobs)
            return tokens_out, logp, all_logprobs(logits, knobs[0]) if want_all else None
        g = self.fill_graph_inputs(size, tokens, positions, noise, knobs)
        self.replays += 1
        g.graph.replay()
        # The outputs are the graph's static buffers, overwritten by the next replay: copy them out
        # ([B, V] logprobs only on request: a decode loop has no use for them).
        tokens_out, logp, logits = g.outputs
        return tokens_out[:bsz].clone(), logp[:bsz].clone(), all_logprobs(logits[:bsz], knobs[0]) if want_all else None

    def fill_graph_inputs(self, size, tokens, positions, noise, knobs) -> CapturedGraph:
        """Copies a batch of B <= size rows into the static inputs of the graph of `size`: the
        padded rows get token 0 at position 0 (deterministic, never read by a real row) and the
        scratch slot (`padded_slots`)."""
        g, bsz = self.graphs[size], tokens.shape[0]
        for static, value in zip(g.inputs, (tokens, positions, noise)):
            static[:bsz].copy_(value)
            static[bsz:].zero_()
        for static, value in zip(g.inputs[3:], (*knobs, self.padded_slots(positions, size))):
            static.copy_(value)
        return g

    def padded_slots(self, positions: torch.Tensor, size: int) -> torch.Tensor:
        """[1, size] cache slots of a decode batch padded to `size`: the real rows' own, then the
        scratch slot for every padded row."""
        pad = positions.new_full((1, size - positions.shape[0]), self.scratch_slot)
        return torch.cat([self.cache_slots(positions), pad], 1)

    # --- generation --------------------------------------------------------------------------

    def prefill(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes the prompts into the cache; returns (logits at each prompt's last token, lengths)."""
        lengths = torch.tensor([len(p) for p in rows], device=self.device)
        logits = self.forward_step(*self._padded(rows))[torch.arange(len(rows), device=self.device), lengths - 1]
        return logits, lengths

    def _padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded tokens [B, S] and their positions 0..S-1 (contiguous, like the trainer's)."""
        width = max(len(r) for r in rows)
        tokens = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row)
        return tokens, torch.arange(width, device=self.device).repeat(len(rows), 1)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        max_tokens: int,
        sampling: SamplingSpec,
        seed: int,
        eos_id: int,
        graphs: bool = True,
        sequence_noise: bool = False,
    ) -> list[Completion]:
        """n samples of every prompt (prompt-major order). Deterministic for a given seed. `graphs`
        False runs every decode step without its captured graph; `sequence_noise`: each sequence's
        noise is a function of the seed and the sequence, not its row (`sampling.noise_stream`)."""
        rows = [p for p in prompts for _ in range(n)]
        bsz, longest = len(rows), max(len(p) for p in rows)
        if bsz > self.max_num_seqs:
            raise ConformanceError(
                f"{len(prompts)} prompts x n={n} = {bsz} sequences exceed the generator's "
                f"max_num_seqs={self.max_num_seqs}; raise max_num_seqs in the profile."
            )
        if longest + max_tokens > self.max_model_len:
            raise ConformanceError(
                f"A prompt of {longest} tokens + max_tokens={max_tokens} exceeds max_model_len="
                f"{self.max_model_len}; raise max_model_len in the profile."
            )
        sequences = [(p, j) for p in prompts for j in range(n)] if sequence_noise else None
        noise = noise_stream(seed, (bsz, self.vocab_size), self.device, sequences)
        knobs = sampling_tensors(sampling, self.device)
        stats, replays_before = GenerateStats(bsz), self.replays
        logits, lengths = self.prefill(rows)
        next_tok, logp = sample_tokens(logits, noise(), knobs, self.config.sampling)
        out_tokens, out_logprobs = [next_tok], [logp]
        done = next_tok == eos_id
        for step in range(max_tokens - 1):
            # Reading `done` waits for the GPU; doing it every step would keep the host from queueing
            # step k+1 while step k runs (H200: 2.4 ms a step against a 1.4 ms graph). Steps past
            # every row's EOS are cut from the completions below, so checking less often changes
            # nothing but the work done.
            if step % self.EOS_CHECK_EVERY == 0 and bool(done.all()):
                break
            next_tok, logp, _ = self.run_decode(
                next_tok.unsqueeze(1), lengths.unsqueeze(1) + step,  # a fresh tensor: a view would be a guard
                noise(), knobs, use_graph=graphs,
            )
            out_tokens.append(next_tok)
            out_logprobs.append(logp)
            done |= next_tok == eos_id
            stats.decode_steps += 1
        stats.graph_replays = self.replays - replays_before
        self.last_generate = stats

        toks = torch.stack(out_tokens, 1).tolist()
        lps = torch.stack(out_logprobs, 1).tolist()
        completions = []
        for prompt, t, lp in zip(rows, toks, lps):
            end = t.index(eos_id) + 1 if eos_id in t else len(t)
            completions.append(Completion(list(prompt), t[:end], lp[:end], eos_id in t))
        return completions

    @torch.no_grad()
    def score(self, completions: list[Completion], sampling: SamplingSpec) -> list[torch.Tensor]:
        """Logprobs of each completion's tokens from ONE prefill over prompt + completion (no
        decode): what the prefill-vs-decode check compares the sampled logprobs against."""
        out = []
        for start in range(0, len(completions), self.max_num_seqs):
            part = completions[start : start + self.max_num_seqs]
            tokens, positions = self._padded([c.prompt_ids + c.token_ids for c in part])
            logp = logprobs_from_logits(self.forward_step(tokens, positions)[:, :-1], tokens[:, 1:], sampling)
            for i, c in enumerate(part):
                first = len(c.prompt_ids) - 1
                out.append(logp[i, first : first + len(c.token_ids)].float().cpu())
        return out
