"""Capture-size policy and the capture-set verdict: the CPU-runnable parts of the CUDA-graph checks."""

import pytest
import torch

from titan_conformance.checks.cudagraphs import capture_set_verdict
from titan_conformance.protocol import CaptureSizes
from titan_conformance.errors import ConformanceError
from titan_conformance.profile.cudagraph import padded_size, policy_capture_sizes, vllm_default_capture_sizes


def test_policy_is_powers_of_two_plus_max_num_seqs_and_cap():
    assert policy_capture_sizes(40) == [1, 2, 4, 8, 16, 32, 40]  # 7 graphs for 8 prompts x 5
    assert policy_capture_sizes(40, cap=64) == [1, 2, 4, 8, 16, 32, 40, 64]
    assert policy_capture_sizes(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert len(vllm_default_capture_sizes(128)) == 35


def test_explicit_sizes_are_deduplicated_sorted_and_validated():
    assert policy_capture_sizes(40, explicit=[8, 1, 8, 40]) == [1, 8, 40]
    for bad in ([], [0, 4], [-2], [1.5]):
        with pytest.raises(ConformanceError, match="cudagraph.sizes"):
            policy_capture_sizes(40, explicit=bad)


def test_batches_pad_up_to_the_next_size_and_run_without_a_graph_above():
    sizes = [1, 2, 4, 8, 16, 32, 40]
    assert [padded_size(b, sizes) for b in (1, 3, 17, 33, 40, 41)] == [1, 4, 32, 40, 40, None]


def test_capture_set_verdict_names_a_size_left_out():
    result = capture_set_verdict(CaptureSizes([1, 2, 4, 8, 16, 32, 40], [1, 2, 4, 16, 32, 40]))
    assert not result.passed and "missing [8]" in result.message
    assert capture_set_verdict(CaptureSizes([1, 2], [1, 2])).passed


def test_sampler_errors_catch_a_sampler_that_drops_its_noise():
    """The sampler part of the graph-equivalence check, on CPU: the PyTorch sampler's own output
    passes; greedy tokens and a logprob at the wrong temperature are each caught."""
    from titan_conformance.checks.cudagraphs import SAMPLER_MAX_ABS, sampler_errors
    from titan_conformance.protocol import DecodeProbe
    from titan_conformance.generator.sampling import all_logprobs, gumbel_noise, sample_tokens, sampling_tensors

    torch.manual_seed(0)
    logits = torch.randn(8, 500) * 3
    noise = gumbel_noise((8, 500), torch.Generator().manual_seed(0))
    divisor, scale = sampling_tensors(1.0, torch.device("cpu"))
    logp = all_logprobs(logits, divisor)
    tokens, token_logp = sample_tokens(logits, noise, divisor, scale)
    assert max(sampler_errors(DecodeProbe(logp, tokens, token_logp, noise))) <= SAMPLER_MAX_ABS
    greedy = logits.argmax(-1)
    shortfall, _ = sampler_errors(DecodeProbe(logp, greedy, logp.gather(-1, greedy[:, None])[:, 0], noise))
    assert shortfall > 100 * SAMPLER_MAX_ABS
    _, logprob_err = sampler_errors(DecodeProbe(logp, tokens, sample_tokens(logits, noise, divisor * 2, scale)[1], noise))
    assert logprob_err > 100 * SAMPLER_MAX_ABS
