"""GRPO: group-normalized advantages and the clipped importance-ratio loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from titan_conformance.profile.sections import GRPOConfig


@dataclass
class RolloutBatch:
    """Sampled sequences, right-padded into one tensor, with what the loss needs."""

    tokens: torch.Tensor
    """[B, S] prompt + completion token ids, right-padded."""
    completion_mask: torch.Tensor
    """[B, S-1] bool: True where tokens[:, 1:] is a completion token (scored by the loss)."""
    generator_logprobs: torch.Tensor
    """[B, S-1] the generator's logprob of each completion token (0 elsewhere)."""
    advantages: torch.Tensor
    """[B] group-normalized advantage of each sequence."""


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Rewards [P * n] (n consecutive samples per prompt) -> (r - mean_group) / (std_group + eps)."""
    groups = rewards.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True, unbiased=False)
    return ((groups - mean) / (std + eps)).view(-1)


def masked_mean_per_sequence(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return ((values * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(r) - r - 1, r = ref - logp."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


def grpo_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    config: GRPOConfig,
    ref_logp: torch.Tensor | None = None,
) -> torch.Tensor:
    """Clipped surrogate against the generator's logprobs, averaged per sequence, then over the batch.
    Positions outside the completions are zeroed first: under processed logprobs a prompt or padding
    token the truncation drops scores -inf, which the KL term would turn into NaN through the mask."""
    mask = batch.completion_mask
    logp = logp.masked_fill(~mask, 0.0)
    ref_logp = None if ref_logp is None else ref_logp.masked_fill(~mask, 0.0)
    ratio = torch.exp(logp - batch.generator_logprobs)
    adv = batch.advantages.unsqueeze(-1)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - config.clip_eps, 1 + config.clip_eps) * adv)
    per_token = -surrogate
    if ref_logp is not None and config.kl_coef > 0:
        per_token = per_token + config.kl_coef * k3_kl(logp, ref_logp)
    return masked_mean_per_sequence(per_token, batch.completion_mask)
