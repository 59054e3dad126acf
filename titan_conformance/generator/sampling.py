"""Sampling as a pure tensor function of (logits, noise, temperature): capturable in a CUDA graph."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

try:  # the CUDA sampler (two Triton kernels)
    from titan_conformance.generator import sampling_kernel
except ImportError:  # no Triton (a CPU-only install): every device takes the PyTorch path
    sampling_kernel = None


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Gumbel(0, 1) noise on the generator's device: argmax(logp + noise) is an exact sample from
    softmax(logp)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float32, device=generator.device)
    return -torch.log(-torch.log(u.clamp_(1e-10, 1.0 - 1e-7)))


def sequence_seed(seed: int, prompt: list[int], sample: int) -> int:
    """A 64-bit seed from a rollout's seed and one sequence of it (its prompt and sample index)."""
    return int.from_bytes(hashlib.blake2b(repr((seed, sample, prompt)).encode(), digest_size=8).digest(), "little")


def noise_stream(
    seed: int, shape: tuple[int, int], device: torch.device, sequences: list[tuple[list[int], int]] | None = None,
) -> Callable[[], torch.Tensor]:
    """A rollout's Gumbel noise, the next [B, V] on each call. By default one generator seeded by
    `seed` draws the whole batch (one draw a step; a row's noise depends on its place in the batch).
    With `sequences` ((prompt, sample index) of each row), row i draws from a generator of its own
    seeded by (seed, that sequence): a sequence gets the same noise among any neighbours, at any row."""
    if sequences is None:
        rng = torch.Generator(device=device).manual_seed(seed)
        return lambda: gumbel_noise(shape, rng)
    rngs = [torch.Generator(device=device).manual_seed(sequence_seed(seed, *s)) for s in sequences]
    return lambda: torch.stack([gumbel_noise(shape[1:], rng) for rng in rngs])


def sampling_tensors(temperature: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(divisor, noise scale): temperature 0 is greedy, reporting the untempered logprob."""
    greedy = temperature <= 0
    return (
        torch.tensor(1.0 if greedy else temperature, device=device),
        torch.tensor(0.0 if greedy else 1.0, device=device),
    )


def sample_tokens(
    logits: torch.Tensor, noise: torch.Tensor, divisor: torch.Tensor, noise_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (token [B], its logprob [B]) under softmax(logits / divisor): the processed
    logprob of the distribution actually sampled from. argmax(x + noise) = argmax(log_softmax(x) +
    noise) row by row, so no [B, V] logprobs are formed; on CUDA two Triton kernels
    (`sampling_kernel.py`)."""
    if logits.is_cuda and sampling_kernel is not None:
        return sampling_kernel.launch_sample(logits, noise, divisor, noise_scale)
    return torch_sample_tokens(logits, noise, divisor, noise_scale)


def torch_sample_tokens(
    logits: torch.Tensor, noise: torch.Tensor, divisor: torch.Tensor, noise_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_tokens` in PyTorch ops, on any device: the CPU path, and the baseline our kernels are
    timed against."""
    x = logits.float() / divisor
    tokens = (x + noise * noise_scale).argmax(dim=-1)
    return tokens, x.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)


def all_logprobs(logits: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """[B, V] fp32 logprobs of the distribution `sample_tokens` samples from."""
    return torch.log_softmax(logits.float() / divisor, dim=-1)


def warm_up_sampler(vocab: int, dtype: torch.dtype, device: torch.device) -> None:
    """Compiles the sampler a generator of this vocabulary and logits dtype launches (one row)."""
    sample_tokens(
        torch.zeros(1, vocab, dtype=dtype, device=device), torch.zeros(1, vocab, device=device),
        *sampling_tensors(1.0, device),
    )
