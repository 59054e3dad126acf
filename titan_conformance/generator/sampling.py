"""Sampling as a pure tensor function of (logits, noise, sampling knobs): capturable in a CUDA graph."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from titan_conformance.profile import SamplingSpec
from titan_conformance.trainer.logprobs import truncated

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


def sampling_tensors(spec: SamplingSpec, device: torch.device) -> tuple[torch.Tensor, ...]:
    """What a decode step (and its captured graph) takes of the spec, as 0-d tensors: (divisor,
    noise scale, top_p, top_k). Temperature 0 is greedy, reporting the untempered logprob."""
    return (
        torch.tensor(spec.divisor, device=device),
        torch.tensor(0.0 if spec.temperature <= 0 else 1.0, device=device),
        torch.tensor(spec.top_p, device=device),
        torch.tensor(spec.top_k, device=device),
    )


def sample_tokens(
    logits: torch.Tensor, noise: torch.Tensor, knobs: tuple[torch.Tensor, ...], built: SamplingSpec,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (token [B], its logprob [B]) sampled from softmax(logits / divisor) truncated
    by `knobs`' top-k/top-p, the logprob in the semantics `built` declares. `built` is the spec the
    generator was built for: it fixes the shape of the step (whether it truncates at all, and
    reports processed logprobs), `knobs` (`sampling_tensors`) the values. Without truncation:
    argmax(x + noise) = argmax(log_softmax(x) + noise) row by row, so no [B, V] logprobs are formed;
    on CUDA two Triton kernels (`sampling_kernel.py`). With it, a sort over the vocabulary
    (`trainer.logprobs.truncated`) in PyTorch ops on every device."""
    if built.truncates:
        return truncated_sample_tokens(logits, noise, knobs, built.processed)
    if logits.is_cuda and sampling_kernel is not None:
        return sampling_kernel.launch_sample(logits, noise, *knobs[:2])
    return torch_sample_tokens(logits, noise, *knobs[:2])


def truncated_sample_tokens(
    logits: torch.Tensor, noise: torch.Tensor, knobs: tuple[torch.Tensor, ...], processed: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-max over the kept tokens; the token's logprob renormalized over them (`processed`) or
    under the full tempered softmax."""
    divisor, noise_scale, top_p, top_k = knobs
    x = logits.float() / divisor
    kept = truncated(x, top_p, top_k)
    tokens = (kept + noise * noise_scale).argmax(dim=-1)
    scored = kept if processed else x
    return tokens, scored.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scored, dim=-1)


def torch_sample_tokens(
    logits: torch.Tensor, noise: torch.Tensor, divisor: torch.Tensor, noise_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Untruncated `sample_tokens` in PyTorch ops, on any device: the CPU path, and the baseline our
    kernels are timed against."""
    x = logits.float() / divisor
    tokens = (x + noise * noise_scale).argmax(dim=-1)
    return tokens, x.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)


def all_logprobs(logits: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """[B, V] fp32 raw logprobs of the step: the full tempered log-softmax."""
    return torch.log_softmax(logits.float() / divisor, dim=-1)


def warm_up_sampler(vocab: int, dtype: torch.dtype, device: torch.device, built: SamplingSpec) -> None:
    """Compiles the sampler a generator of this vocabulary, logits dtype and spec launches (one row)."""
    sample_tokens(
        torch.zeros(1, vocab, dtype=dtype, device=device), torch.zeros(1, vocab, device=device),
        sampling_tensors(built, device), built,
    )
