"""Per-token logprobs of given sequences, at the sampling temperature."""

from __future__ import annotations

import torch

from titan_conformance.model.qwen3 import Qwen3Model


def tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits / temperature in at least fp32 (float64 stays float64: the oracle's): the distribution
    the generator samples from. temperature 0 means 1 (greedy sampling reports the untempered
    distribution)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)) / (temperature if temperature > 0 else 1.0)


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(target) under softmax(logits / temperature), in at least fp32."""
    return torch.log_softmax(tempered(logits, temperature), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_logprobs(model: Qwen3Model, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """[B, S] tokens -> [B, S-1]: entry (b, t) is log p(tokens[b, t+1] | tokens[b, :t+1])."""
    logits = model(tokens)[:, :-1]
    return logprobs_from_logits(logits, tokens[:, 1:], temperature)
