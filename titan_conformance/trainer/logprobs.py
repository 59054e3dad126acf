"""Per-token logprobs of given sequences under a `SamplingSpec`: the tempered distribution, truncated
by top-k/top-p where the spec reports processed logprobs. The generators sample with `truncated`
too, so that both sides agree on the kept set."""

from __future__ import annotations

import torch

from titan_conformance.model.qwen3 import Qwen3Model
from titan_conformance.profile import SamplingSpec


def tempered(logits: torch.Tensor, spec: SamplingSpec) -> torch.Tensor:
    """Logits / temperature in at least fp32 (float64 stays float64: the oracle's): the distribution
    the generator samples from before truncation (greedy: untempered)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)) / spec.divisor


def truncated(x: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Tempered logits [..., V] with -inf outside the tokens top-k and then top-p keep (vLLM's order).

    top-k keeps every token >= the k-th largest (0: off); top-p then keeps the most probable tokens
    while the mass strictly above each is < top_p (at least one; 1: off), renormalized over what
    top-k kept. The kept set is returned as a threshold on the logits, so tokens tied with the
    least probable kept one are kept too (vLLM keeps an arbitrary subset of such a tie; exact ties
    in fp32 logits are rare). Fixed shapes, no host sync: capturable in a CUDA graph. `top_p` and
    `top_k` are 0-d tensors, so a captured graph takes new values by copy."""
    with torch.no_grad():  # the kept set is a constant of the scoring: no gradient through the sort
        ordered = x.detach().sort(dim=-1, descending=True).values
        vocab = x.shape[-1]
        k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab).expand(*x.shape[:-1], 1)
        ordered = ordered.masked_fill(ordered < ordered.gather(-1, k - 1), float("-inf"))
        probs = ordered.softmax(dim=-1)
        above = probs.cumsum(dim=-1) - probs
        kept = torch.where(top_p < 1, (above < top_p).sum(-1, keepdim=True), vocab)
        kept = torch.minimum(kept.clamp(min=1), k)
        threshold = ordered.gather(-1, kept - 1)
    return x.masked_fill(x < threshold, float("-inf"))


def scoring_logits(logits: torch.Tensor, spec: SamplingSpec) -> torch.Tensor:
    """The logits whose log-softmax gives the spec's logprobs: tempered, and truncated where the spec
    reports processed logprobs."""
    x = tempered(logits, spec)
    if not spec.processed:
        return x
    return truncated(x, torch.tensor(spec.top_p, device=x.device), torch.tensor(spec.top_k, device=x.device))


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, spec: SamplingSpec) -> torch.Tensor:
    """log p(target) under the spec's semantics, in at least fp32 (-inf for a target a processed
    spec truncates away)."""
    return torch.log_softmax(scoring_logits(logits, spec), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_logprobs(model: Qwen3Model, tokens: torch.Tensor, spec: SamplingSpec) -> torch.Tensor:
    """[B, S] tokens -> [B, S-1]: entry (b, t) is log p(tokens[b, t+1] | tokens[b, :t+1])."""
    logits = model(tokens)[:, :-1]
    return logprobs_from_logits(logits, tokens[:, 1:], spec)
