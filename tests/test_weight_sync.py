import torch

from test_parity import TOLERANCE, logprob_diff


def test_weight_sync_moves_generator_to_trainer_weights_without_recompiling(compiled_system):
    system = compiled_system
    system.step()  # compiles everything a step needs, then syncs
    compiles_before = system.ledger.counts()
    generator_before = logprob_diff(system, seed=3)  # also proves the sync of that step landed
    assert generator_before.abs().max() <= TOLERANCE

    params_before = {n: p.clone() for n, p in system.generator.model.named_parameters()}
    record = system.step()  # trains (weights change) and syncs
    changed = [n for n, p in system.generator.model.named_parameters() if not torch.equal(p, params_before[n])]
    assert changed, "the step's weight sync did not change the generator"
    assert logprob_diff(system, seed=3).abs().max() <= TOLERANCE
    assert record.times["weight_sync"] >= 0
    # Scoring runs the trainer's training forward and the generator's one graph: nothing recompiles.
    assert system.ledger.counts() == compiles_before


def test_skipped_weight_sync_is_caught(compiled_system):
    system = compiled_system
    real_sync = system.sync_weights
    system.sync_weights = lambda: None  # planted fault: the trainer trains, the generator never hears
    try:
        system.step()
        stale = logprob_diff(system, seed=4)
    finally:
        system.sync_weights = real_sync
        real_sync()
    assert stale.abs().max() > 10 * TOLERANCE


def test_weights_detached_from_their_stack_are_caught():
    """Planted fault: the generator's parameters replaced after its q/k/v and gate/up weights were
    stacked (here by `Module.to()` to another dtype), so a sync would write where no GEMM reads."""
    import pytest

    from titan_conformance.compilation import CompileConfig, CompileLedger
    from titan_conformance.errors import ConformanceError
    from titan_conformance.generator.base import GeneratorConfig
    from titan_conformance.generator.qwen3 import qwen3_generator
    from titan_conformance.model import ModelArgs

    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, hidden_dim=64, vocab_size=50)
    gen = qwen3_generator(args, config=GeneratorConfig(max_num_seqs=2, max_model_len=16, device=torch.device("cpu")),
                          compile_config=CompileConfig(enable=False), ledger=CompileLedger(), dtype=torch.float32)
    weights = [(n, p.clone()) for n, p in gen.model.named_parameters()]
    gen.load_weights(weights)  # healthy: views of the stacks
    gen.model.to(torch.float64)
    with pytest.raises(ConformanceError, match=r"layers\.0\.self_attn\.q_proj\.weight.*no longer a view"):
        gen.load_weights(weights)
