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
    from titan_conformance.profile import SamplingSpec

    torch.manual_seed(0)
    logits = torch.randn(8, 500) * 3
    noise = gumbel_noise((8, 500), torch.Generator().manual_seed(0))
    knobs = sampling_tensors(SamplingSpec(), torch.device("cpu"))
    logp = all_logprobs(logits, knobs[0])
    tokens, token_logp = sample_tokens(logits, noise, knobs, SamplingSpec())
    no_kv = torch.empty(0)  # the sampler's errors read only the logprobs, tokens and noise
    assert max(sampler_errors(DecodeProbe(logp, tokens, token_logp, noise, no_kv))) <= SAMPLER_MAX_ABS
    greedy = logits.argmax(-1)
    shortfall, _ = sampler_errors(DecodeProbe(logp, greedy, logp.gather(-1, greedy[:, None])[:, 0], noise, no_kv))
    assert shortfall > 100 * SAMPLER_MAX_ABS
    doubled = sample_tokens(logits, noise, (knobs[0] * 2, *knobs[1:]), SamplingSpec())[1]
    _, logprob_err = sampler_errors(DecodeProbe(logp, tokens, doubled, noise, no_kv))
    assert logprob_err > 100 * SAMPLER_MAX_ABS


def test_capture_set_verdict_fails_a_mode_the_engine_downgraded():
    """vLLM may run FULL as FULL_DECODE_ONLY or PIECEWISE for an attention backend; the sizes alone
    would still pass."""
    sizes = CaptureSizes([1, 2], [1, 2], mode="FULL_DECODE_ONLY")
    result = capture_set_verdict(sizes, "FULL")
    assert not result.passed and "runs cudagraph mode FULL_DECODE_ONLY where the profile asks for FULL" in result.message
    assert capture_set_verdict(CaptureSizes([1, 2], [1, 2], mode="FULL"), "FULL").passed


class RolloutsByGraphMode:
    """What the engine-level graph check sees of a system: rollouts with graphs and with them
    bypassed, each with its decode counts; `fault` plants one way for them to differ."""

    def __init__(self, fault: str = ""):
        from titan_conformance.profile import load_profile
        from titan_conformance.task import SortLettersTask, TaskTokenizer
        from titan_conformance.task.sort_letters import build_tokenizer

        self.task, self.fault, self.last_decode = SortLettersTask(TaskTokenizer(build_tokenizer())), fault, None
        self.profile = load_profile("tiny-cpu")

    def cudagraph_sizes(self):
        return CaptureSizes([1, 2, 4], [1, 2, 4])

    def rollout(self, problems, seed, n=None, sampling=None, graphs=True):
        from titan_conformance.protocol import Completion, GenerateStats

        shift = 0.5 if graphs and self.fault == "graphs move logprobs" else 0.0
        replays = 3 if graphs and self.fault != "graphs never replayed" else 0
        self.last_decode = GenerateStats(len(problems), 3, replays)
        return [Completion(p.prompt_ids, [5, 6, 7], [-0.1 - shift, -0.2, -0.3], False) for p in problems]


@pytest.mark.parametrize("fault, message", [
    ("", None),
    ("graphs move logprobs", "differ from without by 5.000e-01"),
    ("graphs never replayed", "the rollout with graphs replayed none"),
])
def test_rollout_graph_equivalence_compares_graph_and_bypassed_rollouts(fault, message):
    from titan_conformance.checks.cudagraphs import check_rollout_graph_equivalence

    system = RolloutsByGraphMode(fault)
    result = check_rollout_graph_equivalence(system, system.profile)
    assert result.passed is (message is None), result.message
    assert set(result.metrics["per_batch"]) == {1, 2, 4, "3 (padded)"}
    if message:
        assert message in result.message
