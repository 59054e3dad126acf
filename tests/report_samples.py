"""A complete report built without running a model: fake GRPO runs of two workers through the real
collect and merge code, with the verdicts of real check functions (GPU ones included)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

from titan_conformance.checks.budgets import budget_verdict
from titan_conformance.checks.cudagraphs import capture_set_verdict
from titan_conformance.checks.parity import parity_verdict
from titan_conformance.checks.recompiles import recompile_verdict
from titan_conformance.checks.result import CheckResult
from titan_conformance.report.collect import check_record, run_record
from titan_conformance.report.merge import ReportStore
from titan_conformance.run import ConformanceRun
from titan_conformance.protocol import CaptureSizes, CompileEvent, StepRecord
from titan_conformance.profile import Budget, Tolerance, load_profile
from titan_conformance.task import Reward

EVENTS = [
    CompileEvent("trainer.TransformerBlock", 0, "first compilation", ["float32[128, s0, 64]"], 1.5),
    CompileEvent("trainer.TransformerBlock", 1, "4*L['x'].size()[1] <= 4096", ["float32[128, s1, 64]"], 1.1),
    CompileEvent("generator.TransformerBlock", 0, "first compilation", ["float32[s0, s1, 64]"], 1.2),
]


def fake_run(seed: int = 0, steps: int = 4, slow: float = 1.0) -> ConformanceRun:
    """A ConformanceRun of the reference shape; `slow` scales every time."""
    gen = torch.Generator().manual_seed(seed)
    records = []
    for i in range(steps):
        n = 60 + 7 * i
        diff = torch.randn(n, generator=gen) * 1e-6
        diff[::5] = 0.0
        times = {"generate": 0.50 * slow, "train": (0.30 + 0.01 * i) * slow, "weight_sync": 0.02 * slow}
        records.append(StepRecord(i + 1, 0.01, Reward(0.6, 0.3), 7.0, diff, times, torch.arange(n) % 12))
    system = SimpleNamespace(
        name="reference", device=torch.device("cpu"),
        capabilities=frozenset({"grpo", "compile_ledger", "startup_phases", "cudagraphs", "capture_policy"}),
        startup={p: s * slow for p, s in
                 {"build": 1.0, "weight_load": 0.2, "compile": 8.0, "capture": 0.6, "first_generate": 0.4}.items()},
        describe=lambda: {"provider": "reference", "generator": "native", "device": "cpu", "dtype": "float32"},
        cudagraph_sizes=lambda: CaptureSizes([1, 2, 4, 8], [1, 2, 4, 8], {1: 0.1, 2: 0.1, 4: 0.15, 8: 0.25}),
    )
    return ConformanceRun(system, records, Reward(0.6, 0.3), Reward(0.7, 0.3), list(EVENTS), [], None)


def _checks(run: ConformanceRun, slow: float) -> dict[str, CheckResult]:
    diff = torch.cat([r.logprob_diff for r in run.records])
    tol = Tolerance(max_abs=1e-4, p99_abs=1e-5, mean_abs=1e-6)
    per_size = {s: {"graph_vs_compiled_max_abs": 0.0, "graph_vs_eager_max_abs": 2e-6 * s, "finite": True}
                for s in (1, 2, 4, 8)}
    per_size["3 (padded)"] = {"graph_vs_eager_max_abs": 3e-6, "finite": True}
    return {
        "test_logprob_parity.py::test_trainer_matches_generator_on_sampled_rollouts":
            parity_verdict("logprob_parity", "trainer vs generator logprobs", diff, tol, False),
        "test_recompile_budget.py::test_recompiles_within_limit": recompile_verdict(run.compile_events, [], 8),
        "test_cudagraphs.py::test_captured_sizes_are_the_policys": capture_set_verdict(CaptureSizes([1, 2, 4, 8], [1, 2, 4, 8])),
        "test_cudagraphs.py::test_replay_matches_eager_at_every_capture_size": CheckResult(
            "cudagraph_equivalence", True, "replay matches", {"per_size": per_size}, {"max_abs": 1e-4}),
        "test_budgets.py::test_startup_and_step_time_within_budget": budget_verdict(
            {"startup": 10.2 * slow, "step": 0.83 * slow}, Budget(startup=60.0, step=5.0), "cpu"),
    }


def sample_report(slow: float = 1.0, interrupted: bool = False) -> dict:
    """Two variants (base on gw0, fp32 on gw1), five checks that pass and one skip; times scaled by `slow`."""
    profile = load_profile("tiny-cpu")
    variants = {"base": "gw0", "fp32": "gw1"}
    store = ReportStore(variants=list(variants))
    runs = {v: {**run_record(fake_run(seed, slow=slow), profile), "variant": v} for seed, v in enumerate(variants)}
    for i, (name, result) in enumerate(_checks(fake_run(0, slow=slow), slow).items()):
        variant = list(variants)[i % 2]
        worker, nodeid = variants[variant], f"conformance/{name}[{variant}]"
        store.add_phase(nodeid, "setup", "passed", 0.1, worker, "", run=runs.pop(variant, None))
        store.add_phase(nodeid, "call", "passed" if result.passed else "failed", 0.5, worker,
                        "" if result.passed else result.message, [check_record(result)])
    store.add_phase("conformance/test_learning.py::test_validation_reward_rises[fp32]", "setup", "skipped", 0.0, "gw1",
                    "profile 'tiny-cpu' sets run.expect_learning = false")
    workers = tuple(variants.values())
    for worker in workers:
        store.worker_down(worker, None)
    options = {"suite": "tiny-cpu", "device": "cpu", "generator": "auto", "system": None, "report_dir": None}
    return store.to_report(0, len(store.tests), interrupted, options)


def with_failure(report: dict, nodeid_part: str, message: str) -> dict:
    """A copy of `report` where the test matching `nodeid_part` failed with `message`."""
    report = copy.deepcopy(report)
    for test in report["tests"]:
        if nodeid_part in test["nodeid"]:
            test["outcome"], test["message"] = "failed", message
            for check in test["checks"]:
                check["passed"], check["message"] = False, message
    report["summary"]["failed"] = sum(t["outcome"] == "failed" for t in report["tests"])
    report["summary"]["passed"] = sum(t["outcome"] == "passed" for t in report["tests"])
    return report
