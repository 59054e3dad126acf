"""What the generator samples from and which logprobs both sides report: one spec, threaded through
trainer scoring, the generators and the reference scoring alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LogprobSemantics = Literal["raw", "processed"]


@dataclass(frozen=True, kw_only=True)
class SamplingSpec:
    """The sampling distribution and the logprob semantics both sides follow.

    The generator samples from softmax(logits / temperature) truncated to the tokens top-k and then
    top-p keep (as vLLM applies them). `raw` logprobs are the full tempered log-softmax; `processed`
    ones are renormalized over the kept tokens (-inf outside them). Without truncation they are equal.
    """

    temperature: float = 1.0
    """Divides the logits; 0 is greedy (and reports logprobs at temperature 1)."""
    top_p: float = 1.0
    """Keeps the smallest set of most probable tokens whose tempered mass reaches top_p (at least
    one; tokens tied with the least probable kept one are kept too); 1 keeps every token."""
    top_k: int = 0
    """Keeps the top_k most probable tokens (and any tied with the k-th); 0 keeps every token."""
    logprobs: LogprobSemantics = "processed"
    """Which logprob trainer and generator both report: `raw` (the full tempered softmax) or
    `processed` (renormalized over the kept tokens)."""

    @property
    def truncates(self) -> bool:
        """Whether top-p or top-k drop any token (the sampler then sorts the vocabulary)."""
        return self.top_p < 1 or self.top_k > 0

    @property
    def processed(self) -> bool:
        """Whether reported logprobs are renormalized over a truncated set (differ from raw ones)."""
        return self.truncates and self.logprobs == "processed"

    @property
    def divisor(self) -> float:
        """What the logits are divided by: the temperature, or 1 when greedy."""
        return self.temperature if self.temperature > 0 else 1.0

    def fits(self, built: SamplingSpec) -> bool:
        """Whether a sampler built for `built` (a captured graph, an engine's logprobs mode) samples
        this spec: values change freely, but truncation and processed logprobs are built in."""
        return not self.truncates or (built.truncates and self.logprobs == built.logprobs)

    def describe(self) -> str:
        """One line for reports and failure messages."""
        return (f"temperature {self.temperature:g}, top_p {self.top_p:g}, top_k {self.top_k or 'off'}, "
                f"logprobs {self.logprobs}")
