"""The GRPO system both bundled providers share: the run around a model stack.

What differs between providers — which model the trainer and the generator run, how weights load,
how the trainer compiles, the capture-size policy, the eager copy the precision floor scores with —
is a `ModelStack` the system is composed with; everything else is here, once: the startup phases
and their timing, the toy task and its warm-up, GRPO steps, rollouts, weight sync, validation, the
protocol's probes. `providers.reference` and `providers.torchtitan` are two stacks.
"""

from __future__ import annotations

import contextlib
import random
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from titan_conformance.compilation import CompileLedger
from titan_conformance.data_files import resolve_checkpoint
from titan_conformance.generator.base import Generator
from titan_conformance.generator.native import NativeGenerator
from titan_conformance.providers.activations import ProbeSites, probing, recorded, token_index
from titan_conformance.gpus import resolve_device
from titan_conformance.profile import Profile, SamplingSpec
from titan_conformance.protocol import (
    Activations, CaptureSizes, Completion, DecodeProbe, GenerateStats, Problem, Reward, StepRecord,
)
from titan_conformance.task import SortLettersTask, TaskTokenizer
from titan_conformance.task.sort_letters import build_tokenizer
from titan_conformance.task.warm_up import warm_up
from titan_conformance.timing import timed
from titan_conformance.trainer import RolloutBatch, Trainer, group_advantages

STARTUP_PHASES = ("build", "weight_load", "warmup", "compile", "capture", "first_generate")
"""In the order they run; `warmup` (a random checkpoint's supervised warm-up) is outside the
startup budget."""


@dataclass(kw_only=True)
class BuildContext:
    """What a stack builds for."""

    profile: Profile
    device: torch.device
    dtype: torch.dtype
    ledger: CompileLedger


class ModelStack(Protocol):
    """A provider's model side: what the shared GRPO system is composed with."""

    name: str

    def build(self, ctx: BuildContext, ckpt: Path | None) -> Trainer:
        """The trainer (modules, no weights yet); the native generator too, when it has one (`generator`)."""
    generator: Generator | None
    """The generator once built (a vLLM generator starts in `place`)."""

    def load_weights(self, trainer: Trainer, ckpt: Path | None) -> None:
        """Initialize or load the trainer's (unsharded) weights."""

    def place(self, ctx: BuildContext, trainer: Trainer, ckpt: Path | None) -> None:
        """After the warm-up: shard the trainer, start a generator that loads weights itself."""

    def compile_trainer(self, ctx: BuildContext, trainer: Trainer) -> None: ...

    def capture_policy(self) -> list[int]:
        """The capture-size policy's sizes for the profile (also where nothing is captured)."""

    probe_sites: ProbeSites
    """Where its model (trainer's, generator's, eager copy's alike) computes the probe points."""

    def eager_copy(self, trainer: Trainer, dtype: torch.dtype) -> nn.Module:
        """An uncompiled, unsharded copy of the trainer's model at `dtype`, with its current weights."""

    def score(self, model: nn.Module, tokens: torch.Tensor, sampling: SamplingSpec) -> torch.Tensor:
        """[B, S] tokens -> [B, S-1] logprobs of each next token under `model`, in `sampling`'s semantics."""

    def vocab_size(self) -> int: ...

    def weight_checksums(self, trainer: Trainer) -> dict[str, float]:
        """Sum of each full (gathered) parameter: ranks of a TP run must agree."""

    def describe(self) -> dict[str, str]: ...

    def close(self) -> None: ...


def mean_reward(rewards: list[Reward]) -> Reward:
    return Reward(
        sum(r.correctness for r in rewards) / len(rewards), sum(r.format for r in rewards) / len(rewards)
    )


def rollout_batch(
    completions: list[Completion], advantages: torch.Tensor, pad_id: int, device: torch.device, width: int = 0
) -> RolloutBatch:
    """Right-pads prompt + completion into one tensor at least `width` wide, with the mask and
    logprobs aligned to targets (entry t scores token t + 1)."""
    seqs = [c.prompt_ids + c.token_ids for c in completions]
    width = max(width, *(len(s) for s in seqs))
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width - 1, dtype=torch.bool)
    gen_lp = torch.zeros(len(seqs), width - 1)
    for i, (c, s) in enumerate(zip(completions, seqs)):
        tokens[i, : len(s)] = torch.tensor(s)
        start = len(c.prompt_ids) - 1
        mask[i, start : start + len(c.token_ids)] = True
        gen_lp[i, start : start + len(c.token_ids)] = torch.tensor(c.logprobs)
    return RolloutBatch(tokens.to(device), mask.to(device), gen_lp.to(device), advantages.to(device))


class GRPOSystem:
    """A GRPO system composed with a model stack. Startup phases are timed in `startup`; every
    process-wide setting it changes (Dynamo's config, log artifacts, environment variables,
    registries) is undone by `close()`."""

    BASE_CAPABILITIES = frozenset(
        {"grpo", "trainer_logprobs", "generator_logprobs", "weight_sync", "compile_ledger", "startup_phases",
         "capture_policy", "reference_logprobs", "sequence_noise"}
    )

    def __init__(self, profile: Profile, stack: ModelStack, device: str = "cpu", model_path: str | None = None,
                 ledger: CompileLedger | None = None) -> None:
        """`ledger`: record compilations there (the caller keeps them even when building fails)."""
        self.profile, self.stack, self.name = profile, stack, stack.name
        self.device = resolve_device(device)
        self.dtype = getattr(torch, profile.model.dtype)
        self.scope = contextlib.ExitStack()
        """Process-wide changes, undone at close (`compilation.regional.scoped_compiler` and the like)."""
        self.ledger = self.scope.enter_context(ledger or CompileLedger())
        self.ctx = BuildContext(profile=profile, device=self.device, dtype=self.dtype, ledger=self.ledger)
        self.startup: dict[str, float] = {}
        self.history: list[StepRecord] = []
        self._rng = random.Random(profile.seed)
        spec = model_path or profile.model.checkpoint
        ckpt = None if spec == "random" else resolve_checkpoint(spec)
        s = profile.sampling
        try:
            with timed(self.startup, "build", self.device):
                # The toy task brings its own character tokenizer; its ids fit any vocab >= 16.
                self.tokenizer = TaskTokenizer(build_tokenizer())
                self.task = SortLettersTask(self.tokenizer)
                self.scope.callback(stack.close)
                self.trainer = stack.build(self.ctx, ckpt)
            with timed(self.startup, "weight_load", self.device):
                stack.load_weights(self.trainer, ckpt)
            if profile.model.warmup_steps:
                with timed(self.startup, "warmup", self.device):
                    self._warm_up_on_task()
            with timed(self.startup, "weight_load", self.device):
                stack.place(self.ctx, self.trainer, ckpt)
                self.sync_weights()
            for phase, seconds in self.generator.startup.items():  # an engine that compiled and captured as it started
                self.startup["weight_load"] -= seconds
                self.startup[phase] = self.startup.get(phase, 0.0) + seconds
            with timed(self.startup, "compile", self.device):
                self._wait_warm_start()
                stack.compile_trainer(self.ctx, self.trainer)
                self._compile_shapes()
            with timed(self.startup, "capture", self.device):
                self.captures = self.generator.capture()
            with timed(self.startup, "first_generate", self.device):
                self.rollout(self.task.validation_set(s.num_prompts_per_step), seed=2**31 - 1)
        except BaseException:
            self.close()
            raise

    @property
    def generator(self) -> Generator:
        return self.stack.generator

    @property
    def capabilities(self) -> frozenset[str]:
        out = set(self.BASE_CAPABILITIES) | self.generator.probes
        if self.profile.cudagraph.mode.captures_on(self.device):  # judged even where none were captured
            out.add("cudagraphs")
        if self.profile.parallel.tp > 1:
            out.add("tensor_parallel")
            out.discard("activations")  # a rank's probe points hold its shards only
        return frozenset(out)

    @property
    def unavailable(self) -> dict[str, str]:
        """Why the generator lacks a capability of the protocol's (capability -> the missing hook)."""
        return dict(self.generator.lacks)

    # --- startup -----------------------------------------------------------------------------

    def _wait_warm_start(self) -> None:
        """Before the main thread compiles or imports much (`compilation/warm_start.py`)."""
        if isinstance(self.generator, NativeGenerator):
            self.generator.wait_warm_start()

    def _warm_up_on_task(self) -> None:
        """The profile's supervised warm-up, unsharded, on the system's device; the reference (KL)
        model starts from its result too. Under TP every rank warms up alike (same seed, same
        data), and rank 0's result is broadcast so that no rank drifts by a rounding."""
        m = self.profile.model
        warm_up(self.trainer.model, self.task, m.warmup_steps, self.profile.seed, batch=m.warmup_batch, lr=m.warmup_lr)
        if self.profile.parallel.tp > 1:
            import torch.distributed as dist

            with torch.no_grad():
                for param in self.trainer.model.parameters():
                    dist.broadcast(param.data, src=0)
        if self.trainer.reference is not None:
            self.trainer.reference.load_state_dict(self.trainer.model.state_dict())

    def _compile_shapes(self) -> None:
        """Compiles every shape class the run and the checks use: the trainer's fwd+bwd on a full
        batch at the trainer's fixed width (its logprob probes run that forward too), generator
        prefill + decode, and for vLLM, which decodes only the sequences still running, the step
        of a lone last sequence: one token, a size Dynamo specializes (the native generator decodes
        every row to the end). Gradients are dropped; weights do not change."""
        s = self.profile.sampling
        shape = (self.profile.rollouts_per_step, self.profile.generator.max_model_len)
        tokens = torch.full(shape, self.tokenizer.bos_id, dtype=torch.long, device=self.device)
        self.trainer.model(tokens).float().sum().backward()
        self.trainer.optimizer.zero_grad(set_to_none=True)
        prompt = [self.tokenizer.bos_id] * 5
        self.generator.generate([prompt] * s.num_prompts_per_step, s.n, 2, s.spec, 0, self.tokenizer.eos_id)
        if not isinstance(self.generator, NativeGenerator):
            self.generator.generate([prompt], 1, 2, s.spec, 0, self.tokenizer.eos_id)

    # --- the run -----------------------------------------------------------------------------

    def _batch(self, completions: list[Completion], advantages: torch.Tensor) -> RolloutBatch:
        """The trainer's batch, always max_model_len wide, as torchtitan's trainer trains on a fixed
        sequence length: Inductor picks kernels by the size hints of batch x length (a reduction's
        accumulation, a persistent reduction) and guards on them (`4*B*S <= 4096` on a CPU), so
        batches of varying width recompiled the trainer's backward mid-run, one graph per range."""
        return rollout_batch(completions, advantages, self.tokenizer.pad_id, self.device, self.profile.generator.max_model_len)

    def sync_weights(self) -> None:
        self.generator.load_weights(self.trainer.named_weights())

    def rollout(self, problems: list[Problem], seed: int, n: int | None = None,
                sampling: SamplingSpec | None = None, graphs: bool = True, sequence_noise: bool = False,
                ) -> list[Completion]:
        s = self.profile.sampling
        return self.generator.generate(
            [p.prompt_ids for p in problems], s.n if n is None else n, s.max_tokens,
            sampling or s.spec, seed, self.tokenizer.eos_id,
            graphs=graphs, sequence_noise=sequence_noise,
        )

    @property
    def last_decode(self) -> GenerateStats | None:
        """The decode steps and graph replays of the latest rollout (None where not counted)."""
        return self.generator.last_generate

    def step(self) -> StepRecord:
        """One GRPO step: generate, score, train, sync weights."""
        s, times = self.profile.sampling, {}
        index = len(self.history) + 1
        problems = self.task.sample(self._rng, s.num_prompts_per_step)
        with timed(times, "generate", self.device):
            completions = self.rollout(problems, seed=self.profile.seed * 100_003 + index)
        decode = self.generator.last_generate
        rewards = [self.task.reward(p, c.token_ids) for p, c in zip((p for p in problems for _ in range(s.n)), completions)]
        advantages = group_advantages(torch.tensor([r.total for r in rewards]), s.n)
        batch = self._batch(completions, advantages)
        with timed(times, "train", self.device):
            result = self.trainer.step(batch)
        with timed(times, "weight_sync", self.device):
            self.sync_weights()
        mask = batch.completion_mask
        trainer_lp, generator_lp = (lp[mask].float().cpu() for lp in (result.trainer_logprobs, batch.generator_logprobs))
        record = StepRecord(
            index, result.loss, mean_reward(rewards),
            sum(len(c.token_ids) for c in completions) / len(completions), trainer_lp - generator_lp, times,
            token_positions=(mask.cumsum(-1) - 1)[mask].cpu(),
            sequence_index=torch.arange(len(completions), device=mask.device).unsqueeze(1).expand_as(mask)[mask].cpu(),
            trainer_logprobs=trainer_lp, generator_logprobs=generator_lp,
            rewards=torch.tensor([r.total for r in rewards]), advantages=advantages.float().cpu(),
            grad_norm=result.grad_norm, decode=decode,
        )
        self.history.append(record)
        return record

    def validate(self) -> Reward:
        """Mean reward over the fixed validation set (chunked to max_num_seqs)."""
        problems, rewards = self.task.validation_set(self.profile.validation.size), []
        chunk = self.profile.max_num_seqs
        for i in range(0, len(problems), chunk):
            part = problems[i : i + chunk]
            completions = self.rollout(part, seed=self.profile.seed, n=1, sampling=self.profile.validation_sampling)
            rewards += [self.task.reward(p, c.token_ids) for p, c in zip(part, completions)]
        return mean_reward(rewards)

    # --- the protocol's probes ---------------------------------------------------------------

    def describe(self) -> dict[str, str]:
        engine = self.generator.describe() if self.generator is not None else {}
        return {"provider": self.name, "device": str(self.device), "dtype": self.profile.model.dtype,
                "torch": torch.__version__, **self.stack.describe(), **engine}

    def trainer_logprobs(self, completions: list[Completion]) -> list[torch.Tensor]:
        """The trainer's logprob of every completion token, by its training forward at its training
        shape: batches of a GRPO step's rows (the last one filled up with rows of padding) at the
        fixed width. Another batch size recompiles the trainer's fwd+bwd graph (a batch that equals
        a model dimension is specialized; Inductor guards on size hints, `4*B*S <= 4096` on a CPU),
        so a probe would pay a compile the run never does."""
        rows, out = self.profile.rollouts_per_step, []
        for start in range(0, len(completions), rows):
            part = completions[start : start + rows]
            batch = self._batch(part, torch.zeros(len(part)))
            padding = batch.tokens.new_full((rows - len(part), batch.tokens.shape[1]), self.tokenizer.pad_id)
            tokens = torch.cat([batch.tokens, padding])
            logp = self.trainer.logprobs(tokens)[: len(part)].float().cpu()
            out += [row[m] for row, m in zip(logp, batch.completion_mask.cpu())]
        return out

    def generator_logprobs(self, completions: list[Completion]) -> list[torch.Tensor]:
        """The generator's logprob of every completion token from one prefill (no decode)."""
        return self.generator.score(completions, self.profile.sampling.spec)

    def reference_logprobs(self, completions: list[Completion], dtype: torch.dtype) -> list[torch.Tensor]:
        """The trainer's current weights in a fresh eager copy of the model at `dtype`, scoring every
        completion token in the profile's sampling semantics: float64 is the oracle, the profile's dtype the
        precision floor that trainer and generator are held to (`_eager_logprobs`)."""
        with self._eager_copy(dtype) as model:
            return self._eager_logprobs(model, completions)

    @contextlib.contextmanager
    def _eager_copy(self, dtype: torch.dtype):
        """`stack.eager_copy` of the trainer at `dtype`, its memory handed back to the device after
        (a float64 copy of a 0.6B model is 4.8 GB, which workers sharing the GPU need): its tensors
        go to the meta device, freed whoever still holds the module."""
        model = self.stack.eager_copy(self.trainer, dtype)
        try:
            yield model
        finally:
            model.to(device="meta")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _eager_logprobs(self, model: nn.Module, completions: list[Completion], chunk: int | None = None) -> list[torch.Tensor]:
        """`model`'s logprobs of the completion tokens in the profile's sampling semantics, `chunk`
        sequences a forward (None: a few, so that no [batch, length, vocab] float64 logits over 1 GiB
        are ever whole), only as wide as the longest (an eager copy has no compiled graph to keep at
        the trainer's fixed width)."""
        batch = rollout_batch(completions, torch.zeros(len(completions)), self.tokenizer.pad_id, self.device)
        chunk = chunk or max(1, (1 << 30) // (batch.tokens.shape[1] * self.stack.vocab_size() * 8))
        spec = self.profile.sampling.spec
        with torch.no_grad():
            logp = torch.cat([self.stack.score(model, batch.tokens[i : i + chunk], spec).double().cpu()
                              for i in range(0, len(completions), chunk)])
        return [row[m] for row, m in zip(logp, batch.completion_mask.cpu())]

    def activations(self, completions: list[Completion], side: str, dtype: torch.dtype | None = None) -> Activations:
        """The probe points of a few completions (no more than a trainer step's rows or a generator
        batch: each side runs them in one forward) on `side`: "trainer" by `trainer_logprobs` (its
        training forward at its training shape), "generator" by `generator_logprobs` (one prefill over
        its KV cache), "reference" by a fresh eager copy at `dtype`; compiled blocks as in the run
        (`providers.activations`). The generator's sampled logprobs are the completions' own, so they
        must come from a rollout of the current weights."""
        lengths = [len(c.prompt_ids) + len(c.token_ids) for c in completions]
        if len(completions) > min(self.profile.rollouts_per_step, self.profile.max_num_seqs):
            raise ValueError(f"{len(completions)} completions are more than one forward of each side holds.")
        with contextlib.ExitStack() as scope:
            if side == "trainer":
                model, width, score = self.trainer.model, self.profile.generator.max_model_len, self.trainer_logprobs
            elif side == "generator":
                model, width, score = self.generator.model, max(lengths), self.generator_logprobs
            elif side == "reference":
                model, width = scope.enter_context(self._eager_copy(dtype)), max(lengths)
                score = partial(self._eager_logprobs, model, chunk=len(completions))  # the probes see one forward
            else:
                raise ValueError(f"side {side!r}: trainer, generator or reference")
            with probing(model, self.stack.probe_sites, token_index(lengths, width, self.device)) as recorder:
                logprobs = torch.cat([lp.double() for lp in score(completions)])
        sampled = torch.tensor([x for c in completions for x in c.logprobs], dtype=torch.float64)
        return recorded(recorder, logprobs, sampled if side == "generator" else logprobs)

    def compile_ledger(self) -> CompileLedger:
        return self.ledger

    def cudagraph_sizes(self) -> CaptureSizes:
        captures = getattr(self, "captures", None)
        return CaptureSizes(self.stack.capture_policy(), self.generator.captured_sizes(),
                            dict(getattr(captures, "seconds", {}) or {}), self.generator.cudagraph_mode(),
                            self.generator.capture_counts())

    def probe_decode(self, batch: int, how: str) -> DecodeProbe:
        """Consecutive decode steps from a fixed state: graph, compiled or eager (`generator.probe`)."""
        from titan_conformance.generator.probe import probe_decode

        return probe_decode(self.generator, batch, how)

    def time_decode_step(self, batch: int, position: int) -> float | None:
        """Seconds of one bare decode step of `batch` rows at `position`, as the generator times it."""
        return self.generator.time_decode_step(batch, position)

    def weight_checksums(self) -> dict[str, float]:
        return self.stack.weight_checksums(self.trainer)

    def close(self) -> None:
        """Shuts the generator down, frees device memory and files, and undoes every process-wide
        change the system made (in reverse order)."""
        self.scope.close()
        self.__dict__.pop("trainer", None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> "GRPOSystem":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
