"""What every generator backend is to the GRPO system, and the config they are built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol

import torch

from titan_conformance.errors import ConformanceError
from titan_conformance.profile import CudagraphMode, Profile, SamplingSpec
from titan_conformance.protocol import Completion, GenerateStats


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """The engine's shape: how many sequences, how long, on what, with which graphs."""

    max_num_seqs: int
    """Largest batch of sequences decoded together."""
    max_model_len: int
    """KV-cache slots per sequence (prompt + completion)."""
    device: torch.device
    cudagraph_mode: CudagraphMode = CudagraphMode.NONE
    """As the profile asks; off CUDA the generator runs without graphs whatever it says."""
    capture_sizes: tuple[int, ...] = ()
    """The capture-size policy's sizes (captured only where `cudagraph_mode` captures on `device`)."""
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    """The profile's sampling: whether the decode step truncates (top-p/top-k) and which logprobs
    it reports are built into it (and its graphs); a call may change the values only."""

    @classmethod
    def from_profile(cls, profile: Profile, device: torch.device, capture_sizes: list[int] | None = None) -> "GeneratorConfig":
        """The profile's generator; `capture_sizes`: a provider's own policy instead of ours."""
        sizes = profile.capture_sizes if capture_sizes is None else capture_sizes
        return cls(max_num_seqs=profile.max_num_seqs, max_model_len=profile.generator.max_model_len, device=device,
                   cudagraph_mode=profile.cudagraph.mode, capture_sizes=tuple(sorted(sizes)),
                   sampling=profile.sampling.spec)

    def check_sampling(self, spec: SamplingSpec) -> None:
        """Refuses a call to sample with truncation or logprobs the generator was not built for."""
        if not spec.fits(self.sampling):
            raise ConformanceError(
                f"The generator was built to sample with {self.sampling.describe()} and was asked for "
                f"{spec.describe()}: top-p/top-k truncation and the logprobs mode are fixed when it is built "
                "(its decode graphs, vLLM's logprobs_mode); build it from the profile it samples with."
            )

    @property
    def captured_sizes(self) -> tuple[int, ...]:
        """The sizes graphs are captured at here: none off CUDA or in mode NONE."""
        return self.capture_sizes if self.cudagraph_mode.captures_on(self.device) else ()

    @property
    def cache_rows(self) -> int:
        """KV-cache rows: one per row of the largest batch (the probes run every captured size with
        real rows), plus the scratch row (`scratch_row`)."""
        return max([self.max_num_seqs, *self.captured_sizes]) + 1

    @property
    def scratch_row(self) -> int:
        """The cache row no sequence is ever given: the padded rows of a captured batch and the
        padding token of a one-token step write their keys and values there, so padding never
        lands in a page a real request reads, now or after its row is handed to another request."""
        return self.cache_rows - 1


class Generator(Protocol):
    """A generator backend: samples completions with their logprobs, scores given ones, takes the
    trainer's weights in place."""

    last_generate: GenerateStats | None
    """The decode steps and graph replays of the latest `generate` (None where not counted)."""
    probes: frozenset[str]
    """Which of the protocol's generator probes it offers: "decode_timing" (`time_decode_step`, and
    `last_generate` counted), "decode_probes" (`generator.probe.probe_decode`), "graph_bypass"
    (`generate(..., graphs=False)`), "activations" (its `model`'s blocks probed through a `score`
    prefill, `providers.activations`)."""
    lacks: dict[str, str]
    """Why it lacks a probe of the protocol's that it does not offer (probe -> the missing hook)."""
    startup: dict[str, float]
    """Seconds of other startup phases (compile, capture) spent while it was built, where an engine
    compiles and captures as it starts; {} where they have phases of their own."""

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int, sampling: SamplingSpec, seed: int,
                 eos_id: int, graphs: bool = True, sequence_noise: bool = False) -> list[Completion]:
        """`graphs` False: the same generation with its captured graphs bypassed ("graph_bypass");
        `sequence_noise`: each row's sampling noise drawn from its own generator, seeded from the
        seed, its prompt and its sample index, so a sequence samples the same wherever it sits. Each
        token's logprob in `sampling`'s semantics."""
    def score(self, completions: list[Completion], sampling: SamplingSpec) -> list[torch.Tensor]:
        """Each completion token's logprob from one prefill, in `sampling`'s semantics."""
    def captured_sizes(self) -> list[int]:
        """The batch sizes it holds a FULL graph for."""
    def capture_counts(self) -> dict[int, int]:
        """How many times each size's graph was captured since the generator was built ({}: not counted)."""
    def cudagraph_mode(self) -> str:
        """The cudagraph mode it runs in, as the engine resolved it (NONE off CUDA)."""
    def describe(self) -> dict[str, str]:
        """What the engine resolved, for the report's environment ({} when the profile says it all)."""
    def time_decode_step(self, batch: int, position: int) -> float | None:
        """Seconds of one bare decode step of `batch` rows at `position` (None: none to time)."""
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...
    def capture(self): ...
    def close(self) -> None: ...
