"""What every generator backend is to the GRPO system, and the config they are built from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

import torch

from titan_conformance.profile import CudagraphMode, Profile
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

    @classmethod
    def from_profile(cls, profile: Profile, device: torch.device, capture_sizes: list[int] | None = None) -> "GeneratorConfig":
        """The profile's generator; `capture_sizes`: a provider's own policy instead of ours."""
        sizes = profile.capture_sizes if capture_sizes is None else capture_sizes
        return cls(max_num_seqs=profile.max_num_seqs, max_model_len=profile.generator.max_model_len, device=device,
                   cudagraph_mode=profile.cudagraph.mode, capture_sizes=tuple(sorted(sizes)))

    @property
    def captured_sizes(self) -> tuple[int, ...]:
        """The sizes graphs are captured at here: none off CUDA or in mode NONE."""
        return self.capture_sizes if self.cudagraph_mode.captures_on(self.device) else ()

    @property
    def cache_rows(self) -> int:
        """KV-cache rows: padded rows of a captured batch need rows of their own, never a real row's,
        and so does the padding token of a one-token step (row 1, `NativeGenerator.forward_step`)."""
        return max([2, self.max_num_seqs, *self.captured_sizes])


class Generator(Protocol):
    """A generator backend: samples completions with their logprobs, scores given ones, takes the
    trainer's weights in place."""

    last_generate: GenerateStats | None
    """The decode steps and graph replays of the latest `generate` (None where not counted)."""

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float, seed: int,
                 eos_id: int, sequence_noise: bool = False) -> list[Completion]: ...
    def score(self, completions: list[Completion], temperature: float) -> list[torch.Tensor]: ...
    def can_score(self, temperature: float) -> bool: ...
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...
    def capture(self): ...
    def close(self) -> None: ...
