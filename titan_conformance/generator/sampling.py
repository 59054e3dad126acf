"""Sampling as a pure tensor function of (logits, noise, temperature): capturable in a CUDA graph."""

from __future__ import annotations

import torch


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Gumbel(0, 1) noise on the generator's device: argmax(logp + noise) is an exact sample from
    softmax(logp)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float32, device=generator.device)
    return -torch.log(-torch.log(u.clamp_(1e-10, 1.0 - 1e-7)))


def sampling_tensors(temperature: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(divisor, noise scale): temperature 0 is greedy, reporting the untempered logprob."""
    greedy = temperature <= 0
    return (
        torch.tensor(1.0 if greedy else temperature, device=device),
        torch.tensor(0.0 if greedy else 1.0, device=device),
    )


def sample_tokens(
    logits: torch.Tensor, noise: torch.Tensor, divisor: torch.Tensor, noise_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (token [B], its logprob [B], all logprobs [B, V]) under softmax(logits /
    divisor): the processed logprob of the distribution actually sampled from."""
    logp = torch.log_softmax(logits.float() / divisor, dim=-1)
    tokens = (logp + noise * noise_scale).argmax(dim=-1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), logp
