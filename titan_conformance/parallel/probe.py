"""What a TP check runs on every rank: the GRPO system built from a TP profile, a few steps, and
the measurements the checks need, returned to the parent process (which spawned the ranks).

`tp_rank_run` is the per-rank function for `run_ranks`; `run_tp` spawns the process group, runs
it and returns one `RankResult` per rank.
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from dataclasses import dataclass, field

import torch

from titan_conformance.compilation.ledger import CompileEvent, CompileLedger
from titan_conformance.parallel.launch import LaunchTiming, run_ranks


@dataclass
class RankResult:
    rank: int
    events: list[CompileEvent] = field(default_factory=list)
    """Every compilation this rank made, with `rank` set."""
    limit_hits: list[str] = field(default_factory=list)
    error: str | None = None
    """What stopped the run early (e.g. a recompile-limit failure under fullgraph)."""
    step_diffs: list[torch.Tensor] = field(default_factory=list)
    """Per GRPO step: trainer minus generator logprob of every sampled token."""
    trainer_logprobs: list[torch.Tensor] = field(default_factory=list)
    """Trainer logprobs of the fixed probe completions (one tensor per completion), at TP = tp."""
    generator_logprobs: list[torch.Tensor] = field(default_factory=list)
    """Generator (one prefill) logprobs of the same completions, at TP = tp."""
    tp1_logprobs: list[torch.Tensor] = field(default_factory=list)
    """Rank 0 only: the same completions through an unsharded model with the same (gathered)
    weights and compile config: TP = 1."""
    param_checksums: dict[str, float] = field(default_factory=dict)
    """Sum of each full parameter after the run: replicated weights must agree across ranks."""
    startup: dict[str, float] = field(default_factory=dict)


def _tp1_logprobs(system, weights: dict[str, torch.Tensor], completions, profile) -> list[torch.Tensor]:
    """The trainer's logprobs of `completions` from an unsharded copy of its current weights,
    compiled with the same config under a region of its own (`tp1.TransformerBlock`)."""
    from titan_conformance.compilation import apply_regional_compile
    from titan_conformance.model import Qwen3Model
    from titan_conformance.system.grpo_system import rollout_batch
    from titan_conformance.trainer.logprobs import token_logprobs

    with torch.device(system.device):
        model = Qwen3Model(system.trainer.model.args).to(system.dtype)
    model.load_state_dict(weights, strict=False)  # a tied lm_head appears once in `weights`
    model.requires_grad_(False)
    apply_regional_compile(model, profile.compile, system.ledger, "tp1")
    batch = rollout_batch(completions, torch.zeros(len(completions)), system.tokenizer.pad_id, system.device)
    with torch.no_grad():
        logp = token_logprobs(model, batch.tokens, profile.sampling.temperature).float().cpu()
    mask = batch.completion_mask.cpu()
    return [row[m] for row, m in zip(logp, mask)]


def tp_rank_run(rank: int, world_size: int, profile, steps: int, device: str, probe_prompts: int) -> RankResult:
    """Per rank: build the system (sharded over all ranks), run `steps` GRPO steps, then score a
    fixed set of completions with the trainer (TP), the generator (TP) and, on rank 0, TP = 1."""
    from titan_conformance.parallel.tp_plan import full_state_dict
    from titan_conformance.system.grpo_system import GRPOSystem

    out = RankResult(rank)
    ledger = CompileLedger()
    try:
        system = GRPOSystem(profile, device=device, ledger=ledger)
    except Exception as e:  # e.g. a failing compile in warm-up: a verdict, with the ledger so far
        out.error = f"building the system failed: {type(e).__name__}: {e}".splitlines()[0]
        _print_traceback(rank)
        return _with_ledger(out, ledger, rank)
    with system:
        out.startup = dict(system.startup)
        try:
            for _ in range(steps):
                out.step_diffs.append(system.step().logprob_diff)
            problems = system.task.validation_set(probe_prompts)
            completions = system.rollout(problems, seed=12345, n=2)
            out.trainer_logprobs = system.trainer_logprobs(completions)
            out.generator_logprobs = system.generator_logprobs(completions)
            weights = full_state_dict(system.trainer.model)  # a collective: every rank joins
            out.param_checksums = {n: float(t.double().sum()) for n, t in weights.items()}
            if rank == 0:
                out.tp1_logprobs = _tp1_logprobs(system, weights, completions, profile)
        except Exception as e:  # the checks report it (a recompile-limit failure is a verdict)
            out.error = f"{type(e).__name__}: {e}".splitlines()[0]
            _print_traceback(rank)
    return _with_ledger(out, ledger, rank)


def _print_traceback(rank: int) -> None:
    """The caught exception's traceback on this rank's stderr (the verdict keeps one line)."""
    sys.stderr.write(f"--- rank {rank} caught ---\n{traceback.format_exc()}")
    sys.stderr.flush()


def _with_ledger(out: RankResult, ledger: CompileLedger, rank: int) -> RankResult:
    out.events = [dataclasses.replace(e, rank=rank) for e in ledger.events]
    out.limit_hits = [f"{h} on rank {rank}" for h in ledger.limit_hits]
    return out


def run_tp(profile, steps: int = 2, device: str = "cpu", probe_prompts: int = 4,
           timeout: float = 420.0, timing: LaunchTiming | None = None) -> list[RankResult]:
    """Spawns a process group of profile.parallel.tp ranks (gloo on CPU, NCCL on CUDA), runs
    `tp_rank_run` on each and tears the group down. One call per check."""
    backend = "nccl" if device == "cuda" else "gloo"
    return run_ranks(
        tp_rank_run, profile.parallel.tp, (profile, steps, device, probe_prompts),
        backend=backend, timeout=timeout, timing=timing,
    )


@dataclass
class Scenario:
    """A TP-sharded model driven through `calls` with one compile config: what a recompile probe
    (or a planted fault) feeds a compiled block, without building a whole GRPO system."""

    name: str
    """Also the region's role: `<name>.TransformerBlock`, a code object (and budget) of its own."""
    compile: object
    """The CompileConfig."""
    unwrap_async: bool
    calls: list[tuple[int, int, bool]]
    """(batch, sequence length, with grad): a forward (and backward, with grad) per call."""


def scenario_rank_run(rank: int, world_size: int, args, scenarios: list[Scenario], seed: int = 0) -> list[RankResult]:
    """Per rank, each scenario on a fresh model (`args`: ModelArgs) sharded over all ranks: its
    ledger, limit hits and the error that stopped it, if any."""
    from titan_conformance.compilation import apply_regional_compile
    from titan_conformance.model import Qwen3Model
    from titan_conformance.parallel.tp_plan import apply_tp, tp_mesh
    from titan_conformance.parallel.unwrap import unwrap_async_inputs

    mesh = tp_mesh(world_size)
    results = []
    for sc in scenarios:
        out, ledger = RankResult(rank), CompileLedger()
        model = Qwen3Model(args)
        model.init_weights(seed)
        apply_tp(model, mesh)
        if sc.unwrap_async:
            unwrap_async_inputs(model)
        gen = torch.Generator().manual_seed(seed)
        with ledger:
            try:
                apply_regional_compile(model, sc.compile, ledger, sc.name)
                for bsz, seq, grad in sc.calls:
                    tokens = torch.randint(0, args.vocab_size, (bsz, seq), generator=gen)
                    with torch.set_grad_enabled(grad):
                        logits = model(tokens)
                        if grad:
                            logits.float().pow(2).mean().backward()
            except Exception as e:
                out.error = f"{type(e).__name__}: {e}".splitlines()[0]
        results.append(_with_ledger(out, ledger, rank))
    return results


def eager_plan_probe(rank: int, world_size: int, args, seed: int = 0) -> dict:
    """Per rank, eagerly: the sharded model's logits against the unsharded model's (same seeded
    weights), whether its gathered weights are the originals, whether a tied lm_head still
    shares the embedding's (sharded) parameter, and whether every module's hooks run in insertion
    order with the flatten before the parallel style's input hook."""
    from titan_conformance.model import Qwen3Model
    from titan_conformance.parallel.tp_plan import (
        BLOCK_PLAN,
        apply_tp,
        full_state_dict,
        hooks_in_dict_order,
        tp_mesh,
    )

    full, sharded = Qwen3Model(args), Qwen3Model(args)
    full.init_weights(seed)
    sharded.init_weights(seed)
    apply_tp(sharded, tp_mesh(world_size))
    tokens = torch.randint(0, args.vocab_size, (3, 7), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        max_abs = float((sharded(tokens) - full(tokens)).abs().max())
    original = dict(full.named_parameters())
    gathered = full_state_dict(sharded)
    return {
        "logits_max_abs": max_abs,
        "weights_round_trip": gathered.keys() == original.keys()
        and all(torch.equal(t, original[n]) for n, t in gathered.items()),
        "lm_head_shares_embedding": sharded.lm_head.weight is sharded.embed_tokens.weight,
        "hooks_in_dict_order": all(hooks_in_dict_order(m) for m in sharded.modules()),
        "flatten_first": all(
            next(iter(b.get_submodule(n)._forward_pre_hooks.values())).__name__ == "_flatten"
            for b in sharded.layers for n in BLOCK_PLAN
        ),
    }


def optimizer_step_probe(rank: int, world_size: int, args, seed: int = 0) -> dict:
    """Per rank: one trainer-like step (fwd+bwd, clip, AdamW) of a sharded model, once with
    AdamW's foreach kernels (torch's default on CUDA) and once with the per-tensor loop (its
    default on CPU). Returns the foreach run's error, if any, and the largest difference of the
    updated full weights between the two."""
    from titan_conformance.model import Qwen3Model
    from titan_conformance.parallel.grads import clip_grad_norm_
    from titan_conformance.parallel.tp_plan import apply_tp, full_state_dict, tp_mesh
    from titan_conformance.trainer.grpo import GRPOConfig
    from titan_conformance.trainer.trainer import Trainer

    mesh = tp_mesh(world_size)
    tokens = torch.randint(0, args.vocab_size, (3, 7), generator=torch.Generator().manual_seed(seed))
    updated, error = {}, None
    for foreach in (True, False):
        model = Qwen3Model(args)
        model.init_weights(seed)
        apply_tp(model, mesh)
        trainer = Trainer(model, GRPOConfig(lr=1e-2, weight_decay=0.1), 1.0)
        trainer.reset_optimizer(foreach=foreach)
        model(tokens).float().pow(2).mean().backward()
        clip_grad_norm_(model.parameters(), 1.0)
        try:
            trainer.optimizer.step()
        except RuntimeError as e:
            error = f"{type(e).__name__}: {e}".splitlines()[0]
        updated[foreach] = full_state_dict(model)
    return {
        "foreach_error": error,
        "groups": len(trainer.optimizer.param_groups),
        "max_abs": max(float((updated[True][n] - t).abs().max()) for n, t in updated[False].items()),
    }
