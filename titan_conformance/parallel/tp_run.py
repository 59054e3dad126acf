"""What a TP check runs on every rank, through the provider protocol: the system built by the
session's own factory (ours, torchtitan's, a team's) at parallel.tp, a few steps, and what the
checks need, returned to the parent process (which spawned the ranks).

`tp_rank_run` is the per-rank function for `run_ranks`; `run_tp` spawns the process group, runs it
and returns one `RankReport` per rank.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import traceback

import torch

from titan_conformance.compilation.ledger import CompileLedger
from titan_conformance.parallel.launch import LaunchTiming, run_ranks
from titan_conformance.protocol import RankReport, load_factory

TP_PROBES = "the TP probes after the steps"
"""The ledger's phase while a rank scores the probe set: at the shapes its steps ran, so judged too."""
NEEDED = {"tensor_parallel", "grpo", "trainer_logprobs", "generator_logprobs", "reference_logprobs"}
"""The capabilities the TP checks use."""


def tp_rank_run(rank: int, world_size: int, spec: str | None, profile, model_path: str | None, steps: int,
                device: str, probe_prompts: int) -> RankReport:
    """Per rank: build the system (sharded over all ranks) with the factory `spec`, run `steps` GRPO
    steps, then score a fixed set of completions with the trainer (TP), the generator (TP) and an
    eager unsharded copy of the same weights (TP = 1: `reference_logprobs`, a collective)."""
    out = RankReport(rank)
    factory = load_factory(spec)
    # A factory that takes `ledger=` (ours do) records there, so a build that fails in compile
    # still reports what it compiled (e.g. a recompile-limit hit or a crash in a compiled block).
    ledger = CompileLedger() if "ledger" in inspect.signature(factory).parameters else None
    try:
        system = factory(profile, device=device, model_path=model_path, **({"ledger": ledger} if ledger else {}))
    except Exception as e:  # e.g. a failing compile in warm-up: a verdict
        out.error = f"building the system failed: {type(e).__name__}: {e}".splitlines()[0]
        _print_traceback(rank)
        _add_compilations(out, ledger, rank)
        return out
    try:
        out.startup, out.describe = dict(system.startup), dict(system.describe())
        try:
            if missing := NEEDED - set(system.capabilities):
                raise RuntimeError(f"the system lacks capabilities {sorted(missing)} that the TP checks need")
            for i in range(steps):
                _mark(system, f"step {i + 1} of {steps}")
                out.step_diffs.append(system.step().logprob_diff)
            _mark(system, TP_PROBES)
            completions = system.rollout(system.task.validation_set(probe_prompts), seed=12345, n=2)
            out.trainer_logprobs = system.trainer_logprobs(completions)
            out.generator_logprobs = system.generator_logprobs(completions)
            out.param_checksums = system.weight_checksums()  # collectives: every rank joins
            tp1 = system.reference_logprobs(completions, getattr(torch, profile.model.dtype))
            out.tp1_logprobs = tp1 if rank == 0 else []
        except Exception as e:  # the checks report it (a recompile-limit failure is a verdict)
            out.error = f"{type(e).__name__}: {e}".splitlines()[0]
            _print_traceback(rank)
        if "compile_ledger" in system.capabilities:
            _add_compilations(out, system.compile_ledger(), rank)
    finally:
        system.close()
    return out


def _mark(system, phase: str) -> None:
    """Stamps `phase` on what the system compiles from now on (`CompileLedger.phase`)."""
    if "compile_ledger" in system.capabilities:
        system.compile_ledger().phase = phase


def _add_compilations(out: RankReport, ledger: CompileLedger | None, rank: int) -> None:
    if ledger is not None:
        out.events = [dataclasses.replace(e, rank=rank) for e in ledger.events]
        out.limit_hits = [f"{h} on rank {rank}" for h in ledger.limit_hits]


def _print_traceback(rank: int) -> None:
    """The caught exception's traceback on this rank's stderr (the verdict keeps one line)."""
    sys.stderr.write(f"--- rank {rank} caught ---\n{traceback.format_exc()}")
    sys.stderr.flush()


def run_tp(profile, spec: str | None = None, model_path: str | None = None, steps: int = 2, device: str = "cpu",
           probe_prompts: int = 4, timeout: float = 420.0, timing: LaunchTiming | None = None) -> list[RankReport]:
    """Spawns a process group of profile.parallel.tp ranks (gloo on CPU, NCCL on CUDA), runs
    `tp_rank_run` with the provider `spec` on each and tears the group down. One call per check."""
    backend = "nccl" if device == "cuda" else "gloo"
    return run_ranks(
        tp_rank_run, profile.parallel.tp, (spec, profile, model_path, steps, device, probe_prompts),
        backend=backend, timeout=timeout, timing=timing,
    )
