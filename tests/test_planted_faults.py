"""Every conformance check FAILS on a planted fault, with a message that names the cause.

Faulty systems run eagerly (compile disabled) where compile is not the point, to keep this fast;
the recompile faults compile for real.
"""

from __future__ import annotations

import dataclasses

import pytest

import faults
from titan_conformance.checks.budgets import check_budgets
from titan_conformance.checks.invariance import check_batch_invariance, check_prefill_decode
from titan_conformance.checks.learning import check_learning
from titan_conformance.checks.parity import check_logprob_parity
from titan_conformance.checks.recompiles import check_recompile_budget
from titan_conformance.checks.weight_sync import check_weight_sync
from titan_conformance.run import perform_run
from titan_conformance.providers.reference import build_system
from titan_conformance.profile import Budget, load_profile

STEPS = 3


def profile(steps: int = STEPS, **sections):
    base = load_profile("tiny-cpu")
    changes = {"run": dataclasses.replace(base.run, steps=steps),
               "compile": dataclasses.replace(base.compile, enable=False)}
    for name, fields in sections.items():
        changes[name] = dataclasses.replace(getattr(base, name), **fields)
    return dataclasses.replace(base, **changes)


def run_with(factory, prof):
    system = factory(prof)
    return perform_run(system, prof.run.steps), system


@pytest.fixture(scope="module")
def healthy():
    prof = profile()
    run, system = run_with(build_system, prof)
    yield run, prof
    system.close()


def test_healthy_eager_system_passes_every_check(healthy):
    run, prof = healthy
    for check in (check_logprob_parity,):
        assert check(run, prof).passed
    for check in (check_batch_invariance, check_prefill_decode, check_weight_sync):
        result = check(run.system, prof)
        assert result.passed, result.message


def test_parity_catches_generator_rope_theta():
    prof = profile()
    run, system = run_with(faults.wrong_rope_theta, prof)
    result = check_logprob_parity(run, prof)
    system.close()
    assert not result.passed
    assert "differ beyond tolerance" in result.message and "look at the generator's RoPE" in result.message
    assert result.metrics["max_abs"] > 1e-2


def test_bitwise_mode_rejects_what_tolerance_accepts(healthy):
    run, prof = healthy
    bitwise = dataclasses.replace(prof, tolerances=dataclasses.replace(prof.tolerances, bitwise=True))
    assert check_logprob_parity(run, prof).passed
    result = check_logprob_parity(run, bitwise)
    assert not result.passed and "bitwise (exact) mode" in result.message


def test_weight_sync_check_catches_skipped_sync():
    prof = profile(steps=1)
    run, system = run_with(faults.skipped_weight_sync, prof)
    result = check_weight_sync(system, prof)
    system.close()
    assert not result.passed and "embedding table (weights not synced" in result.message  # localized


def test_weight_sync_check_catches_a_sync_that_stops_landing(healthy):
    """In sync before the check's step, but that step's sync is lost: caught by the movement test."""
    run, prof = healthy
    system = run.system
    real_sync = system.sync_weights
    system.sync_weights = lambda: None
    try:
        result = check_weight_sync(system, prof)
    finally:
        system.sync_weights = real_sync
        real_sync()
    assert not result.passed and "Weight sync did not land" in result.message and "tracking error of 1.00" in result.message


@pytest.mark.parametrize(
    "fault, check, cause",
    [
        (faults.packed_trainer_attention, check_batch_invariance, "attending across their boundaries"),
        (faults.stale_decode_cache, check_prefill_decode, "stale or misplaced cache"),
    ],
)
def test_invariance_checks_catch_their_fault(fault, check, cause):
    prof = profile(steps=1)
    system = fault(prof)
    result = check(system, prof)
    system.close()
    assert not result.passed and cause in result.message


def test_budget_of_one_millisecond_names_the_phase(healthy):
    run, prof = healthy
    tight = dataclasses.replace(prof, budgets={"cpu": Budget(compile=1e-3, step=1e-3)})
    result = check_budgets(run, tight)
    assert not result.passed
    assert "compile took" in result.message and "step took" in result.message and "over by" in result.message


def test_budgets_skip_when_the_device_class_has_none(healthy):
    run, prof = healthy
    reason = check_budgets(run, dataclasses.replace(prof, budgets={}))
    assert isinstance(reason, str) and "'cpu'" in reason and "[budgets.cpu]" in reason


def test_learning_check_catches_a_policy_that_does_not_move():
    prof = profile(steps=2, grpo={"lr": 1e-12})
    run, system = run_with(build_system, prof)
    system.close()
    result = check_learning(run, prof)
    assert not result.passed and "GRPO did not learn" in result.message


def compiled_profile(steps: int = 6, **compile_fields):
    base = profile(steps=steps)
    return dataclasses.replace(base, compile=dataclasses.replace(base.compile, enable=True, **compile_fields))


def test_recompile_check_catches_shape_that_changes_every_step():
    """Static shapes (dynamic=False): every new prompt/completion length compiles the trainer's block
    again; past the limit Dynamo silently falls back to eager. The check fails and prints the ledger."""
    prof = compiled_profile(dynamic=False, fullgraph=False, recompile_limit=3, backend="aot_eager")
    run, system = run_with(build_system, prof)
    system.close()
    result = check_recompile_budget(run, prof)
    assert not result.passed
    assert "hit recompile_limit=3" in result.message and "size mismatch" in result.message
    assert "region" in result.message and "trainer.TransformerBlock" in result.message  # the ledger


def test_recompile_check_reports_a_fullgraph_limit_failure():
    """Under fullgraph the limit is a hard error mid-run; the check reports it with the ledger."""
    prof = compiled_profile(dynamic=False, fullgraph=True, recompile_limit=3, backend="aot_eager")
    run, system = run_with(build_system, prof)
    system.close()
    assert run.error and len(run.records) < prof.run.steps  # stopped by the limit
    result = check_recompile_budget(run, prof)
    assert not result.passed and "the run failed" in result.message and "hit recompile_limit=3" in result.message


ONE_GENERATOR_GRAPH = {"trainer": 1, "generator": 1}  # fwd+bwd (probes too); prefill and decode


def test_recompile_check_passes_on_the_same_run_with_dynamic_shapes():
    prof = compiled_profile(dynamic=True, fullgraph=True, recompile_limit=3, backend="aot_eager",
                            max_compiles=ONE_GENERATOR_GRAPH)
    run, system = run_with(build_system, prof)
    system.close()
    result = check_recompile_budget(run, prof)
    assert result.passed, result.message


def test_recompile_check_holds_a_role_to_its_max_compiles():
    """A generator whose blocks see [B, S] rows again (after the system compiled its flat row)
    compiles prefill rows and decode (S = 1) apart: within recompile_limit, over the profile's
    count for the role."""
    prof = compiled_profile(dynamic=True, fullgraph=True, recompile_limit=3, backend="aot_eager",
                            max_compiles=ONE_GENERATOR_GRAPH)
    run, system = run_with(faults.generator_rows_not_flattened, prof)
    system.close()
    result = check_recompile_budget(run, prof)
    assert not result.passed
    assert "generator.TransformerBlock compiled 3 times > compile.max_compiles.generator=1" in result.message
    assert "2 <= x.size()[1]" in result.message  # the guard that split the graph


FROZEN = {"zero_compiles_after_startup": True, "max_compiles": {}}  # the after-startup rule on its own


@pytest.mark.parametrize("fault, guard", [
    (faults.decode_new_dtype_at_step_3, "tensor 'index' dtype mismatch. expected Long, actual Int"),
    (faults.decode_new_shape_class_at_step_3, "tensor 'x' size mismatch at index 0. expected 1, actual 128"),
])
def test_a_compile_after_startup_fails_naming_region_guard_and_step(fault, guard):
    """A decode that sees a new dtype or shape class from step 3 on compiles once more, at step 3:
    within every count, still a compile after startup."""
    prof = compiled_profile(steps=4, dynamic=True, backend="aot_eager", **FROZEN)
    run, system = run_with(fault, prof)
    system.close()
    assert run.error is None, run.error
    late = [e for e in run.compile_events if e.after_startup]
    assert [(e.region, e.phase) for e in late] == [("generator.TransformerBlock", "step 3 of 4")]
    result = check_recompile_budget(run, prof)
    assert not result.passed and result.metrics["compiles_after_startup"] == 1
    first_line = result.message.splitlines()[0]
    assert first_line.startswith("Compiled after startup (1; compile.zero_compiles_after_startup = true")
    assert "generator.TransformerBlock compiled at step 3 of 4 on guard failure" in first_line and guard in first_line
    off = dataclasses.replace(prof, compile=dataclasses.replace(prof.compile, zero_compiles_after_startup=False))
    counted = check_recompile_budget(run, off)  # off: counted, not judged
    assert counted.passed and "1 after startup (not judged" in counted.message
