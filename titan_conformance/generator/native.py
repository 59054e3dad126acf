"""The native generator: the same Qwen3 blocks over a static KV cache, batched prefill + decode.

The decode step (every compiled block, the final norm, lm_head and sampling) is one
shape-static function of (tokens, positions, noise, temperature). On CUDA, in a FULL mode, it is
captured as one CUDA graph per capture size; a batch is padded up to the next size and a batch
above the largest runs without a graph.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable

import torch
from torch import nn

from titan_conformance.compilation import CompileConfig, CompileLedger, apply_regional_compile
from titan_conformance.compilation.warm_start import WarmStart, start_warm_start
from titan_conformance.errors import ConformanceError
from titan_conformance.generator.capture_sizes import effective_mode, padded_size
from titan_conformance.generator.sampling import (
    all_logprobs, gumbel_noise, sample_tokens, sampling_tensors, warm_up_sampler,
)
from titan_conformance.model.args import ModelArgs
from titan_conformance.model.attention import KVCacheAttention
from titan_conformance.model.qwen3 import Qwen3Model, detached_from_stack
from titan_conformance.system.timing import synchronize
from titan_conformance.trainer.logprobs import logprobs_from_logits


@dataclass
class Completion:
    """One sampled completion."""

    prompt_ids: list[int]
    token_ids: list[int]
    """Generated tokens, including the final EOS when one was sampled."""
    logprobs: list[float]
    """Logprob of each generated token under the distribution it was sampled from."""
    finished: bool
    """True when the completion ended on EOS (False: stopped at max_tokens)."""


@dataclass
class CapturedGraph:
    """One FULL decode graph and the static buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    """tokens [N, 1], positions [N, 1], noise [N, V], divisor [], noise scale []."""
    outputs: tuple[torch.Tensor, ...]
    """tokens [N], token logprobs [N], logits [N, V]."""
    seconds: float
    memory_bytes: int


@dataclass
class DecodeProbe:
    """One decode step as `NativeGenerator.probe_decode` ran it (CPU tensors)."""

    logprobs: torch.Tensor
    """[B, V] fp32: log-softmax of the step's logits."""
    tokens: torch.Tensor
    """[B]: the tokens the step sampled."""
    token_logprobs: torch.Tensor
    """[B]: their logprobs as the sampler reported them."""
    noise: torch.Tensor
    """[B, V]: the Gumbel noise the step sampled with (temperature 1)."""


@dataclass
class GenerateStats:
    """What one `generate` call ran: the checks hold a run's decode steps to its graph replays."""

    batch: int
    """Rows decoded together (prompts x n)."""
    decode_steps: int = 0
    """Decode steps after the prefill's first sampled token."""
    graph_replays: int = 0
    """Decode steps that replayed a captured FULL graph (the rest ran the step itself)."""


@dataclass
class CaptureReport:
    sizes: list[int] = field(default_factory=list)
    seconds: dict[int, float] = field(default_factory=dict)
    memory_bytes: dict[int, int] = field(default_factory=dict)


def cache_rows(max_num_seqs: int, cudagraph_mode: str, capture_sizes: list[int] | None, device) -> int:
    """KV-cache rows a generator needs: padded rows of a captured batch need rows of their own,
    never a real row's (no graphs are captured off CUDA or in mode NONE), and so does the padding
    token of a one-token step (row 1, see `NativeGenerator.forward_step`)."""
    captured = capture_sizes if effective_mode(cudagraph_mode, device) != "NONE" else None
    return max([2, max_num_seqs, *(captured or [])])


class NativeGenerator:
    """Generates with the shared model code; weights arrive from the trainer in place.

    `model` already has its KV-cache inner attention (with `cache_rows(...)` rows of
    `max_model_len` slots) and its compiled blocks; `forward(tokens, positions, slots) -> logits`
    runs it on one flat row of N tokens ([1, N] each; logits [1, N, V]), every token with its cache
    slot. `for_qwen3` builds our reference model this way.
    """

    EOS_CHECK_EVERY = 8
    """Decode steps between two host reads of whether every row has sampled EOS."""

    def __init__(
        self,
        model: nn.Module,
        vocab_size: int,
        max_num_seqs: int,
        max_model_len: int,
        device: torch.device,
        cudagraph_mode: str = "NONE",
        capture_sizes: list[int] | None = None,
        forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model, self.vocab_size = model, vocab_size
        self.max_num_seqs, self.max_model_len, self.device = max_num_seqs, max_model_len, device
        self.cudagraph_mode = effective_mode(cudagraph_mode, device)
        self.capture_sizes = sorted(capture_sizes or []) if self.cudagraph_mode != "NONE" else []
        self._forward = forward or (lambda tokens, positions, slots: model(tokens, positions, cache_slots=slots))
        self.graphs: dict[int, CapturedGraph] = {}
        self.last_generate: GenerateStats | None = None
        self.replays = 0
        """Graph replays so far (every `run_decode` that replayed one)."""
        """The decode steps and graph replays of the latest `generate`."""
        self.warm_start: WarmStart | None = None
        """Background kernel compiles started at build; the first forward waits for them."""

    @classmethod
    def for_qwen3(
        cls,
        args: ModelArgs,
        compile_config: CompileConfig,
        ledger: CompileLedger,
        max_num_seqs: int,
        max_model_len: int,
        device: torch.device,
        dtype: torch.dtype,
        cudagraph_mode: str = "NONE",
        capture_sizes: list[int] | None = None,
        tp_mesh=None,
        unwrap_async: bool = False,
        stacked: bool = True,
    ) -> "NativeGenerator":
        """Our Qwen3 with a static KV cache, regionally compiled under the role `generator`.
        `tp_mesh`: shard the model over this 1-D DeviceMesh (each rank caches its own KV heads);
        `unwrap_async`: resolve AsyncCollectiveTensor block inputs before each compiled block;
        `stacked`: q/k/v and gate/up as one GEMM each (`Qwen3Model.fuse_projections`; never under TP)."""
        rows = cache_rows(max_num_seqs, cudagraph_mode, capture_sizes, device)
        with torch.device(device):
            model = Qwen3Model(args).to(dtype)
        model.requires_grad_(False).eval()
        if stacked and tp_mesh is None:
            model.fuse_projections()
        tp = tp_mesh.size() if tp_mesh is not None else 1
        kv_heads = args.n_kv_heads // tp  # each rank caches (and attends over) its own heads
        model.set_inner_attention(
            lambda _: KVCacheAttention(rows, max_model_len, kv_heads, args.head_dim, dtype, device)
        )
        if tp_mesh is not None:
            from titan_conformance.parallel import apply_tp

            apply_tp(model, tp_mesh)
        if unwrap_async:
            from titan_conformance.parallel import unwrap_async_inputs

            unwrap_async_inputs(model)
        gen = cls(model, args.vocab_size, max_num_seqs, max_model_len, device, cudagraph_mode, capture_sizes)
        gen.region = apply_regional_compile(model, compile_config, ledger, role="generator")
        if compile_config.warm_start:  # last: nothing here may fail once the thread runs
            gen.warm_start = start_warm_start(
                device, compile_config.backend if compile_config.enable else None,
                [partial(model.layers[0].self_attn.inner_attention.warm_up, args.n_heads // tp),
                 partial(warm_up_sampler, args.vocab_size, dtype, device)],
            )
        return gen

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
    def forward_step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Runs the blocks over [B, S] tokens at `positions` (row i in cache row i), writing the KV
        cache; returns logits [B, S, V].

        The blocks see one flat row of B * S tokens, as vLLM's do: a prefill and a decode step are
        then one shape class, so the block compiles once for both. A single token gets a padding
        token (cache row 1, position 0): Dynamo specializes a size of 1, which would be one more
        compile."""
        self.wait_warm_start()
        bsz, seqlen = tokens.shape
        flat = [tokens.reshape(1, -1), positions.reshape(1, -1), self.cache_slots(positions)]
        if bsz * seqlen == 1:  # (filled on the device: a host copy cannot be graph-captured)
            flat = [torch.cat([t, torch.full_like(t, pad)], 1) for t, pad in zip(flat, (0, 0, self.max_model_len))]
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

    def decode_step(self, tokens, positions, noise, divisor, noise_scale):
        """The whole decode step; what a FULL graph captures: (tokens, their logprobs, logits).
        The logits are lm_head's own output, so returning them costs the graph nothing."""
        logits = self.forward_step(tokens, positions)[:, -1]
        return *sample_tokens(logits, noise, divisor, noise_scale), logits

    # --- CUDA graphs -------------------------------------------------------------------------

    @torch.no_grad()
    def capture(self) -> CaptureReport:
        """Captures one FULL decode graph per capture size, largest first into one shared memory
        pool (smaller graphs reuse the largest one's memory)."""
        report = CaptureReport()
        if self.cudagraph_mode == "NONE":
            return report
        pool = torch.cuda.graph_pool_handle()
        vocab = self.vocab_size
        for size in sorted(self.capture_sizes, reverse=True):
            inputs = (
                torch.zeros(size, 1, dtype=torch.long, device=self.device),
                torch.zeros(size, 1, dtype=torch.long, device=self.device),
                torch.zeros(size, vocab, dtype=torch.float32, device=self.device),
                *sampling_tensors(1.0, self.device),
            )
            torch.cuda.synchronize()
            start, mem_before = time.perf_counter(), torch.cuda.memory_allocated(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up: compiles this batch class, allocates workspaces
                for _ in range(2):
                    self.decode_step(*inputs)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                outputs = self.decode_step(*inputs)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            memory = torch.cuda.memory_allocated(self.device) - mem_before
            self.graphs[size] = CapturedGraph(graph, inputs, outputs, seconds, memory)
            report.seconds[size], report.memory_bytes[size] = seconds, memory
        report.sizes = sorted(self.graphs)
        return report

    def run_decode(
        self, tokens, positions, noise, divisor, noise_scale,
        use_graph: bool = True, want_all: bool = False,
    ):
        """One decode step for a batch of B rows: graph replay at the padded size when one was
        captured for it, else the step itself. Returns the B real rows: (tokens, their logprobs,
        all logprobs [B, V] when `want_all`, else None)."""
        bsz = tokens.shape[0]
        size = padded_size(bsz, self.capture_sizes) if use_graph and self.graphs else None
        if size is None:
            tokens_out, logp, logits = self.decode_step(tokens, positions, noise, divisor, noise_scale)
            return tokens_out, logp, all_logprobs(logits, divisor) if want_all else None
        g = self.graphs[size]
        self.replays += 1
        for static, value in zip(g.inputs, (tokens, positions, noise)):
            static[:bsz].copy_(value)
            static[bsz:].zero_()  # padding rows: deterministic, and never read by a real row
        for static, value in zip(g.inputs[3:], (divisor, noise_scale)):
            static.copy_(value)
        g.graph.replay()
        # The outputs are the graph's static buffers, overwritten by the next replay: copy them out
        # ([B, V] logprobs only on request: a decode loop has no use for them).
        tokens_out, logp, logits = g.outputs
        return tokens_out[:bsz].clone(), logp[:bsz].clone(), all_logprobs(logits[:bsz], divisor) if want_all else None

    # --- generation --------------------------------------------------------------------------

    def _prefill_batch(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
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
        temperature: float,
        seed: int,
        eos_id: int,
    ) -> list[Completion]:
        """n samples of every prompt (prompt-major order). Deterministic for a given seed."""
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
        rng = torch.Generator(device=self.device).manual_seed(seed)
        vocab = self.vocab_size
        divisor, scale = sampling_tensors(temperature, self.device)
        stats, replays_before = GenerateStats(bsz), self.replays
        logits, lengths = self._prefill_batch(rows)
        next_tok, logp = sample_tokens(logits, gumbel_noise((bsz, vocab), rng), divisor, scale)
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
                gumbel_noise((bsz, vocab), rng), divisor, scale,
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
    def score(self, completions: list[Completion], temperature: float) -> list[torch.Tensor]:
        """Logprobs of each completion's tokens from ONE prefill over prompt + completion (no
        decode): what the prefill-vs-decode check compares the sampled logprobs against."""
        out = []
        for start in range(0, len(completions), self.max_num_seqs):
            part = completions[start : start + self.max_num_seqs]
            tokens, positions = self._padded([c.prompt_ids + c.token_ids for c in part])
            logp = logprobs_from_logits(self.forward_step(tokens, positions)[:, :-1], tokens[:, 1:], temperature)
            for i, c in enumerate(part):
                first = len(c.prompt_ids) - 1
                out.append(logp[i, first : first + len(c.token_ids)].float().cpu())
        return out

    @torch.no_grad()
    def time_decode_step(self, batch: int, position: int, repeats: int = 5) -> float:
        """Median seconds of one bare decode step of `batch` rows at `position`, as `generate` runs
        one (a graph replay at the padded size where one was captured, else the step itself) with
        nothing around it: the reference a run's generate time per decode step is held to. The
        first run is not timed. Writes only slots at `position`, which a later generation writes
        again before it reads them."""
        position = min(position, self.max_model_len - 1)
        tokens = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        positions = torch.full((batch, 1), position, dtype=torch.long, device=self.device)
        noise = torch.zeros(batch, self.vocab_size, device=self.device)
        divisor, scale = sampling_tensors(1.0, self.device)
        replays, seconds = self.replays, []
        for _ in range(repeats + 1):
            synchronize(self.device)
            start = time.perf_counter()
            self.run_decode(tokens, positions, noise, divisor, scale)
            synchronize(self.device)
            seconds.append(time.perf_counter() - start)
        self.replays = replays  # a probe, not a decode step of the run
        return statistics.median(seconds[1:])

    @torch.no_grad()
    def probe_decode(self, batch: int, how: str, prompt_len: int = 7, seed: int = 0) -> DecodeProbe:
        """One decode step from a fixed state (deterministic prompts prefilled, then one decode at
        temperature 1), run `how`: "graph" (replay at the padded size), "compiled" (the same
        compiled step, no graph) or "eager" (compile bypassed)."""
        rng = torch.Generator(device=self.device).manual_seed(seed)
        vocab = self.vocab_size
        prompts = torch.randint(0, vocab, (batch, prompt_len), generator=rng, device=self.device).tolist()
        logits, lengths = self._prefill_batch(prompts)
        tokens = logits.argmax(-1, keepdim=True)
        noise = gumbel_noise((batch, vocab), rng)
        args = (tokens, lengths.unsqueeze(1).clone(), noise, *sampling_tensors(1.0, self.device))
        if how == "graph" or how == "compiled" and batch not in self.graphs:
            sampled, logp, all_logp = self.run_decode(*args, use_graph=how == "graph", want_all=True)
        else:
            if how == "compiled":
                # The same compiled step on the graph's own input buffers: same addresses and
                # alignment, so the same kernels are chosen; only the graph itself differs.
                for buffer, value in zip(self.graphs[batch].inputs, args):
                    buffer.copy_(value)
                args = self.graphs[batch].inputs
            with torch.compiler.set_stance("force_eager") if how == "eager" else contextlib.nullcontext():
                sampled, logp, step_logits = self.decode_step(*args)
            all_logp = all_logprobs(step_logits, args[3])
        return DecodeProbe(all_logp.cpu(), sampled.cpu(), logp.float().cpu(), noise.cpu())
