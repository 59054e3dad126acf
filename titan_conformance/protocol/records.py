"""The records a system under test returns to the checks: plain data, no behaviour of a provider.

Every provider returns these types; the checks and the report read nothing else of a system.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True)
class Reward:
    """A completion's reward: correctness in [0, 1] plus a format bonus."""

    correctness: float
    format: float

    @property
    def total(self) -> float:
        return self.correctness + self.format


class Problem(Protocol):
    """One prompt of the task: the checks pass it back to the system, and read only its tokens."""

    prompt_ids: list[int]


class Task(Protocol):
    """The verifiable task a system trains on, as the checks use it."""

    def sample(self, rng: random.Random, count: int) -> list[Problem]: ...
    def validation_set(self, size: int) -> list[Problem]: ...
    def reward(self, problem: Problem, completion_ids: list[int]) -> Reward: ...


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
class GenerateStats:
    """What one `generate` call ran: the checks hold a run's decode steps to its graph replays."""

    batch: int
    """Rows decoded together (prompts x n)."""
    decode_steps: int = 0
    """Decode steps after the prefill's first sampled token."""
    graph_replays: int = 0
    """Decode steps that replayed a captured FULL graph (the rest ran the step itself)."""


@dataclass
class StepRecord:
    """What one GRPO step did and measured."""

    step: int
    loss: float
    reward: Reward
    avg_tokens: float
    logprob_diff: torch.Tensor
    """Trainer minus generator logprob of every sampled token (1-D, fp32, on CPU)."""
    times: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: generate, train, weight_sync."""
    token_positions: torch.Tensor | None = None
    """Position in its completion (0 = first generated token) of each `logprob_diff` entry."""
    sequence_index: torch.Tensor | None = None
    """Which completion of the step (0-based, prompt-major) each `logprob_diff` entry belongs to."""
    trainer_logprobs: torch.Tensor | None = None
    """The trainer's logprob of each entry (before its update), aligned with `logprob_diff`."""
    generator_logprobs: torch.Tensor | None = None
    """The generator's logprob of each entry (as sampled), aligned with `logprob_diff`."""
    rewards: torch.Tensor | None = None
    """Total reward of each completion."""
    advantages: torch.Tensor | None = None
    """GRPO advantage of each completion."""
    grad_norm: float | None = None
    """The trainer step's gradient norm before clipping."""
    decode: GenerateStats | None = None
    """The rollout's decode steps and graph replays (None when the generator does not say)."""

    @property
    def seconds(self) -> float:
        return sum(self.times.values())

    def line(self) -> str:
        d = self.logprob_diff
        return (
            f"Step {self.step:2d} | Loss: {self.loss:+.4f} | Reward: {self.reward.total:+.3f} "
            f"(correctness={self.reward.correctness:+.3f}, format={self.reward.format:+.3f}) | "
            f"Avg tokens: {self.avg_tokens:.0f} | Logprob diff: mean={float(d.mean()):.4e}, "
            f"max={float(d.abs().max()):.4e} | Time: {self.seconds:.1f}s"
        )


@dataclass(frozen=True)
class CaptureSizes:
    """The capture sizes of a system: what its policy yields and what its generator captured."""

    policy: list[int]
    """The capture-size policy's sizes for the profile, also where nothing is captured."""
    captured: list[int]
    """The sizes the generator holds a FULL graph for (empty off CUDA or in mode NONE)."""
    seconds: dict[int, float] = field(default_factory=dict)
    """Capture time per captured size."""
    mode: str = ""
    """The cudagraph mode the generator runs in as its engine resolved it ("" where it does not say):
    an engine may run FULL as FULL_DECODE_ONLY, PIECEWISE or NONE whatever it was asked."""
    captures: dict[int, int] = field(default_factory=dict)
    """How many times each size's graph was captured since the system was built ({} where the
    generator does not count): once at startup, or the graphs a run measured are not the ones it
    started with."""


@dataclass
class DecodeProbe:
    """T consecutive decode steps from a fixed state (CPU tensors): B distinct prompts of different
    lengths prefilled (so every row decodes at its own positions), then T steps, each fed fixed
    tokens (teacher-forced: runs that sample differently still decode the same states)."""

    logprobs: torch.Tensor
    """[T, B, V] fp32: log-softmax of each step's logits."""
    tokens: torch.Tensor
    """[T, B]: the tokens each step sampled."""
    token_logprobs: torch.Tensor
    """[T, B]: their logprobs as the sampler reported them."""
    noise: torch.Tensor
    """[T, B, V]: the Gumbel noise each step sampled with (temperature 1)."""
    kv_written: torch.Tensor
    """[layers, 2, T, B, ...]: the keys (0) and values (1) the steps left in each real row's own
    slot of each step, every layer: the state a replay mutates, not only its outputs."""
    stray_slots: list[tuple[int, int]] = field(default_factory=list)
    """(cache row, position) of every cache slot the steps wrote other than the real rows' slots
    of each step and the generator's scratch slots (where padding goes): slots a real request
    reads or will read once its row is handed out (a prompt of this batch overwritten, a page of
    another row)."""


@dataclass
class RankReport:
    """What one rank of a tensor-parallel run returns to the TP checks."""

    rank: int
    events: list = field(default_factory=list)
    """Every compilation this rank made (`CompileEvent`), with `rank` set."""
    limit_hits: list[str] = field(default_factory=list)
    error: str | None = None
    """What stopped the run early (e.g. a recompile-limit failure under fullgraph)."""
    step_diffs: list[torch.Tensor] = field(default_factory=list)
    """Per GRPO step: trainer minus generator logprob of every sampled token."""
    trainer_logprobs: list[torch.Tensor] = field(default_factory=list)
    """Trainer logprobs of the fixed probe completions (one tensor per completion), at TP = tp."""
    generator_logprobs: list[torch.Tensor] = field(default_factory=list)
    """Generator (one prefill) logprobs of the same completions, at TP = tp."""
    tp1_logprobs: list[torch.Tensor] = field(default_factory=list)
    """Rank 0 only: the same completions through an unsharded eager copy with the same (gathered)
    weights at the profile's dtype: TP = 1."""
    param_checksums: dict[str, float] = field(default_factory=dict)
    """Sum of each full parameter after the run: replicated weights must agree across ranks."""
    startup: dict[str, float] = field(default_factory=dict)
    describe: dict[str, str] = field(default_factory=dict)
