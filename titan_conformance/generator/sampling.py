"""Sampling as a pure function of (logits, noise): shape-static and capturable in a CUDA graph."""

from __future__ import annotations

import torch

from titan_conformance.trainer.logprobs import logprobs_from_logits


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Gumbel(0, 1) noise: argmax(logp + noise) is an exact sample from softmax(logp)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float32).clamp_(1e-10, 1.0 - 1e-7)
    return (-torch.log(-torch.log(u))).to(device)


def sample_tokens(
    logits: torch.Tensor, noise: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (token [B], logprob of that token under the distribution sampled from [B]).

    temperature 0 is greedy. The logprob is the processed one: after temperature scaling.
    """
    scores = logits.float()
    if temperature > 0:
        scores = torch.log_softmax(scores / temperature, dim=-1) + noise
    tokens = scores.argmax(dim=-1)
    return tokens, logprobs_from_logits(logits, tokens, temperature)
