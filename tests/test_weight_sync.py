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
    # Trainer no-grad scoring above may compile its own graph; the generator never recompiles.
    assert system.ledger.counts()["generator.TransformerBlock"] == compiles_before["generator.TransformerBlock"]


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
