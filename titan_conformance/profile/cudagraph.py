"""CUDA-graph modes and the capture-size policy.

Our policy captures few graphs: powers of 2 up to a cap, plus max_num_seqs (the decode batch a GRPO
step actually runs: prompts_per_step x n) and the cap itself. At max_num_seqs = 40 that is 7 sizes
(1, 2, 4, 8, 16, 32, 40) where vLLM's default policy captures 35 at max_num_seqs = 128.
"""

from __future__ import annotations

import bisect
import enum

from titan_conformance.errors import ConformanceError


class CudagraphMode(str, enum.Enum):
    """How the generator's decode step runs: NONE without graphs; FULL and FULL_DECODE_ONLY capture
    the whole step (every block, the final norm, lm_head and sampling) as one graph per size."""

    NONE = "NONE"
    FULL = "FULL"
    FULL_DECODE_ONLY = "FULL_DECODE_ONLY"

    @property
    def captures(self) -> bool:
        """Whether this mode captures graphs where graphs exist."""
        return self is not CudagraphMode.NONE

    def captures_on(self, device) -> bool:
        """Whether graphs are captured on `device` (a torch.device or its type): CUDA only."""
        return self.captures and getattr(device, "type", device) == "cuda"

    def on(self, device) -> "CudagraphMode":
        """The mode as it runs on `device`: NONE off CUDA."""
        return self if self.captures_on(device) else CudagraphMode.NONE


def policy_capture_sizes(max_num_seqs: int, cap: int = 0, explicit: list[int] | None = None) -> list[int]:
    """The sizes to capture. `cap` 0 means max_num_seqs (what decode-only graphs need)."""
    if explicit is not None:
        if not explicit or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in explicit):
            raise ConformanceError(
                f"cudagraph.sizes = {explicit!r} is invalid: give a non-empty list of positive batch "
                "sizes, or leave it out to use the policy (powers of 2 up to the cap, plus max_num_seqs)."
            )
        return sorted(set(explicit))
    if max_num_seqs < 1 or cap < 0:
        raise ConformanceError(f"Capture-size policy needs max_num_seqs >= 1 and cap >= 0 (got {max_num_seqs}, {cap}).")
    cap = cap or max_num_seqs
    sizes = {1 << i for i in range(cap.bit_length()) if 1 << i <= cap}
    return sorted(sizes | {min(max_num_seqs, cap), cap})


def vllm_default_capture_sizes(max_num_seqs: int) -> list[int]:
    """vLLM's default list, for comparison: 1, 2, 4, then every 8 to 256, then every 16, up to
    min(2 x max_num_seqs, 512)."""
    cap = min(2 * max_num_seqs, 512)
    sizes = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, cap + 1, 16))
    return [s for s in sizes if s <= cap]


def padded_size(batch: int, sizes: list[int]) -> int | None:
    """The capture size a batch runs at (the next one up), or None when it is above them all."""
    i = bisect.bisect_left(sizes, batch)
    return sizes[i] if i < len(sizes) else None
