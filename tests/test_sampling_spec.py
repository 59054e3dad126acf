"""top-p/top-k truncation and the two logprob semantics: the kept set is vLLM's, raw and processed
logprobs differ by log(kept mass), a sampled token is always kept, and the sampler truncates under
torch.compile too."""

from __future__ import annotations

import pytest
import torch

from titan_conformance.generator.sampling import gumbel_noise, sample_tokens, sampling_tensors
from titan_conformance.profile import SamplingSpec
from titan_conformance.trainer.logprobs import logprobs_from_logits, scoring_logits, truncated


def _knobs(p: float, k: int):
    return torch.tensor(p), torch.tensor(k)


@pytest.mark.parametrize("p, k", [(0.95, 0), (0.5, 0), (1.0, 7), (0.9, 20), (1e-6, 0), (1.0, 0)])
def test_kept_set_is_vllms(p, k):
    """The same tokens kept as vLLM's PyTorch top-k/top-p (ascending cumsum <= 1 - p dropped)."""
    vllm_ops = pytest.importorskip("vllm.v1.sample.ops.topk_topp_sampler")
    x = torch.randn(16, 300, generator=torch.Generator().manual_seed(0)) * 3
    ours = truncated(x, *_knobs(p, k))
    theirs = vllm_ops.apply_top_k_top_p_pytorch(
        x.clone(), torch.full((16,), k) if k else None, torch.full((16,), p) if p < 1 else None)
    assert torch.equal(ours.isinf(), theirs.isinf())
    assert (~ours.isinf()).sum(-1).min() >= 1 and (k == 0 or (~ours.isinf()).sum(-1).max() <= k)
    assert (p < 1 or k) or not ours.isinf().any()  # off is off: nothing dropped


def test_ties_at_the_boundary_are_all_kept():
    x = torch.tensor([[2.0, 1.0, 1.0, 1.0, -5.0]])
    assert (~truncated(x, *_knobs(1.0, 2)).isinf()).sum() == 4  # the 2nd largest is tied three ways
    assert (~truncated(x, *_knobs(0.4, 0)).isinf()).sum() == 1  # p(2.0) = 0.475
    assert (~truncated(x, *_knobs(0.5, 0)).isinf()).sum() == 4  # reaching 0.5 takes a 1.0: all three kept


def test_raw_and_processed_differ_by_log_kept_mass():
    logits = torch.randn(4, 9, 200, generator=torch.Generator().manual_seed(1)) * 4
    targets = logits.argmax(-1)  # the most probable token is always kept
    raw = logprobs_from_logits(logits, targets, SamplingSpec(temperature=0.8, top_p=0.9, logprobs="raw"))
    processed = logprobs_from_logits(logits, targets, SamplingSpec(temperature=0.8, top_p=0.9))
    kept = scoring_logits(logits, SamplingSpec(temperature=0.8, top_p=0.9)).isfinite()
    kept_mass = (torch.softmax(logits / 0.8, -1) * kept).sum(-1)
    torch.testing.assert_close(processed - raw, -kept_mass.log())
    assert (kept_mass >= 0.9 - 1e-6).all() and (processed > raw).any()
    untruncated = SamplingSpec(temperature=0.8)
    assert torch.equal(logprobs_from_logits(logits, targets, untruncated), raw)


@pytest.mark.parametrize("logprobs", ["raw", "processed"])
def test_the_sampler_draws_only_kept_tokens_in_eager_and_compiled(logprobs):
    spec = SamplingSpec(temperature=0.8, top_p=0.8, top_k=50, logprobs=logprobs)
    logits = torch.randn(64, 500, generator=torch.Generator().manual_seed(2)) * 3
    noise = gumbel_noise((64, 500), torch.Generator().manual_seed(3))
    knobs = sampling_tensors(spec, torch.device("cpu"))
    eager = sample_tokens(logits, noise, knobs, spec)
    compiled = torch.compile(sample_tokens, fullgraph=True, dynamic=True)(logits, noise, knobs, spec)
    for tokens, logp in (eager, compiled):
        expected = logprobs_from_logits(logits, tokens, spec)
        assert expected.isfinite().all()  # every sampled token is inside the kept set
        torch.testing.assert_close(logp, expected)
    assert torch.equal(eager[0], compiled[0])
    free = sample_tokens(logits, noise, sampling_tensors(SamplingSpec(temperature=0.8), torch.device("cpu")), spec)
    assert not logprobs_from_logits(logits, free[0], SamplingSpec(temperature=0.8, top_p=0.8, top_k=50)).isfinite().all()


def test_a_generator_built_without_truncation_refuses_to_truncate():
    from titan_conformance.errors import ConformanceError
    from titan_conformance.generator.base import GeneratorConfig

    config = GeneratorConfig(max_num_seqs=2, max_model_len=8, device=torch.device("cpu"))
    config.check_sampling(SamplingSpec(temperature=0.5))  # values change freely
    with pytest.raises(ConformanceError, match="top-p/top-k truncation and the logprobs mode are fixed"):
        config.check_sampling(SamplingSpec(top_p=0.9))
