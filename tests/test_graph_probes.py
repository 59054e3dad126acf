"""On CPU: the decode probes (teacher-forced steps of prompts of different lengths, the keys and values
written, stray cache slots) and the probe-based graph equivalence check, with each graph's replay
emulated by running the compiled step on the graph's own static inputs; planted padding and
stale-slot faults fail it, and a size captured twice fails the capture-size verdict. The same
faults on real CUDA graphs: `test_cudagraph_faults.py`."""

from __future__ import annotations

import pytest
import torch

import faults
from titan_conformance.checks.cudagraphs import capture_set_verdict, padded_batch, sampler_errors
from titan_conformance.checks.graph_probes import check_graph_equivalence, probe_order
from titan_conformance.compilation import CompileConfig, CompileLedger
from titan_conformance.generator.base import GeneratorConfig
from titan_conformance.generator.capture import CapturedGraph, static_inputs
from titan_conformance.generator.probe import PROBE_STEPS, probe_decode
from titan_conformance.generator.qwen3 import qwen3_generator
from titan_conformance.model import ModelArgs
from titan_conformance.profile import load_profile
from titan_conformance.protocol import CaptureSizes

SIZES = [1, 2, 4, 6]
ARGS = ModelArgs(dim=64, n_heads=2, n_kv_heads=1, head_dim=32, hidden_dim=128, vocab_size=16, n_layers=2)


class StepReplay:
    """Stands in for a CUDA graph: a replay runs the decode step on the graph's static inputs and
    writes the graph's static outputs, as a replay of the captured step does."""

    def __init__(self, gen, inputs) -> None:
        self.gen, self.inputs = gen, inputs
        self.outputs = gen.decode_step(*inputs)

    def replay(self) -> None:
        for out, new in zip(self.outputs, self.gen.decode_step(*self.inputs)):
            out.copy_(new)


class ProbedGenerator:
    """What `check_graph_equivalence` asks of a system, over a bare generator."""

    def __init__(self, gen) -> None:
        self.generator = gen

    def cudagraph_sizes(self) -> CaptureSizes:
        return CaptureSizes(SIZES, sorted(self.generator.graphs), captures=self.generator.capture_counts())

    def probe_decode(self, batch: int, how: str):
        return probe_decode(self.generator, batch, how)


def emulated_graphs_generator(ledger, **config):
    """A CPU generator whose "graphs" replay the compiled step on each size's static buffers."""
    config = GeneratorConfig(max_num_seqs=max(SIZES), max_model_len=24, device=torch.device("cpu"), **config)
    gen = qwen3_generator(ARGS, config=config, compile_config=CompileConfig(), ledger=ledger, dtype=torch.float32)
    gen.model.init_weights(0)
    with torch.no_grad():
        gen.capture_sizes = list(SIZES)
        for size in SIZES:
            step = StepReplay(gen, static_inputs(gen, size))
            gen.graphs[size] = CapturedGraph(step, step.inputs, step.outputs, 0.0, 0)
            gen.captures[size] += 1
    return gen


@pytest.fixture(scope="module")
def gen():
    with CompileLedger() as ledger:
        yield emulated_graphs_generator(ledger)


def test_a_probe_decodes_several_steps_of_prompts_of_different_lengths(gen):
    compiled, eager = probe_decode(gen, 5, "compiled"), probe_decode(gen, 5, "eager")
    assert compiled.logprobs.shape == (PROBE_STEPS, 5, ARGS.vocab_size) and compiled.tokens.shape == (PROBE_STEPS, 5)
    assert compiled.kv_written.shape[:4] == (ARGS.n_layers, 2, PROBE_STEPS, 5)
    assert compiled.stray_slots == [] and eager.stray_slots == []
    assert float((compiled.logprobs - eager.logprobs).abs().max()) < 1e-4
    assert float((compiled.kv_written - eager.kv_written).abs().max()) < 1e-4
    assert max(sampler_errors(compiled)) < 1e-4
    # Row 0 and row 1 decode the same fed tokens at other positions (4 and 11 tokens of prompt).
    assert not torch.equal(compiled.kv_written[:, :, :, 0], compiled.kv_written[:, :, :, 1])


def test_a_step_writing_another_rows_page_is_seen(gen, monkeypatch):
    """Decode tokens written one cache row down: the last real row's lands in a row the batch does
    not own (a probe reports it whatever is read back)."""
    real = type(gen).cache_slots

    def shifted(positions):
        slots = real(gen, positions)
        return slots + gen.max_model_len if positions.shape[1] == 1 else slots

    monkeypatch.setattr(gen, "cache_slots", shifted)
    probe = probe_decode(gen, 3, "eager")
    assert (3, 4 + 7 * 2 % 9) in probe.stray_slots, probe.stray_slots


def test_the_order_is_seeded_largest_first_and_padded_batches_fill_up_each_size():
    order = probe_order([1, 2, 4, 8, 16, 32, 40], seed=0)
    assert order[0] == 40 and sorted(order) == [1, 2, 4, 8, 16, 32, 40]
    assert order == probe_order([1, 2, 4, 8, 16, 32, 40], seed=0) != probe_order([1, 2, 4, 8, 16, 32, 40], seed=1)
    assert [padded_batch(s, [1, 2, 4, 6]) for s in (1, 2, 4, 6)] == [None, None, 3, 5]
    assert padded_batch(8, [8, 16]) == 4  # the smallest size gets a padded batch too where one fits


def test_emulated_graphs_pass_at_every_size_after_a_padded_batch(gen):
    profile = load_profile("tiny-cpu")
    result = check_graph_equivalence(ProbedGenerator(gen), profile)
    assert result.passed, result.message
    m = result.metrics
    assert m["probe_order"] == probe_order(SIZES, profile.seed) and m["probe_order_seed"] == profile.seed
    assert m["captures"] == {1: 1, 2: 1, 4: 1, 6: 1}
    assert list(m["per_size"]) == [1, 2, "3 (padded)", 4, "5 (padded)", 6]
    assert m["per_size"][6]["after_padded"] == 5 and m["per_size"][6]["steps"] == PROBE_STEPS
    assert m["per_size"][4]["kv_graph_vs_compiled_max_abs"] == 0.0


@pytest.mark.parametrize("plant, cause", [
    (faults.plant_padding_in_real_pages, "the replay wrote 1 cache slot outside its real rows' own (row 3 pos 0)"),
    (faults.plant_slots_left_by_previous_size, "outside its real rows' own"),
])
def test_planted_padding_faults_fail_naming_the_slots(gen, plant, cause):
    undo = plant(ProbedGenerator(gen))
    try:
        result = check_graph_equivalence(ProbedGenerator(gen), load_profile("tiny-cpu"))
    finally:
        undo()
    assert not result.passed and cause in result.message, result.message
    assert "padded rows must map to the scratch slot" in result.message


def test_a_scratch_slot_in_a_real_row_leaks_padding_into_it(gen, monkeypatch):
    monkeypatch.setattr(gen, "scratch_slot", 0)
    result = check_graph_equivalence(ProbedGenerator(gen), load_profile("tiny-cpu"))
    assert not result.passed and "padding leaks into real rows" in result.message, result.message


def test_a_size_captured_twice_fails_the_capture_set():
    twice = capture_set_verdict(CaptureSizes([1, 2], [1, 2], captures={1: 1, 2: 2}))
    assert not twice.passed and "size 2 2 times" in twice.message and twice.metrics["captures"] == {1: 1, 2: 2}
    uncounted = capture_set_verdict(CaptureSizes([1, 2], [1, 2]))
    assert uncounted.passed and uncounted.metrics["captures"] is None


def test_a_truncating_sampler_runs_through_the_graphs_static_inputs():
    """A generator built for top-p/top-k samples through its graphs' static inputs (top_p and top_k
    among them) as without graphs: the same tokens and processed logprobs, every token kept; a call
    asking for no truncation runs the same graphs with top_p 1 and samples the full distribution."""
    from titan_conformance.profile import SamplingSpec
    from titan_conformance.trainer.logprobs import logprobs_from_logits

    spec = SamplingSpec(temperature=0.8, top_p=0.7, top_k=12)
    with CompileLedger() as ledger:
        gen = emulated_graphs_generator(ledger, sampling=spec)
        prompts = [[1, 2, 3], [4, 5, 6], [6, 7, 8], [3, 3, 9]]
        replayed = gen.generate(prompts, 1, 8, spec, seed=3, eos_id=-1)
        assert gen.last_generate.graph_replays == 7
        direct = gen.generate(prompts, 1, 8, spec, seed=3, eos_id=-1, graphs=False)
        untruncated = gen.generate(prompts, 1, 8, SamplingSpec(temperature=0.8), seed=3, eos_id=-1)
    assert [c.token_ids for c in replayed] == [c.token_ids for c in direct]
    for c, d in zip(replayed, direct):
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(d.logprobs))
    scored = gen.score(replayed, spec)
    for c, s in zip(replayed, scored):
        assert torch.isfinite(s).all()
        torch.testing.assert_close(torch.tensor(c.logprobs), s, atol=1e-5, rtol=0)
    tokens = torch.tensor([c.prompt_ids + c.token_ids for c in untruncated])
    with torch.no_grad():
        logits = gen.forward_step(tokens, torch.arange(tokens.shape[1]).repeat(len(prompts), 1))[:, :-1]
    full = logprobs_from_logits(logits, tokens[:, 1:], SamplingSpec(temperature=0.8))[:, -8:]
    torch.testing.assert_close(torch.tensor([c.logprobs for c in untruncated]), full, atol=1e-5, rtol=0)
