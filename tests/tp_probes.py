"""Rank functions for the TP tests (test-only, out of the package): a launcher smoke test, TP
scenarios on a bare sharded model, the TP plan's eager checks and an optimizer step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from titan_conformance.compilation.ledger import CompileLedger
from titan_conformance.protocol import RankReport


def _with_ledger(out: RankReport, ledger: CompileLedger, rank: int) -> RankReport:
    out.events = [dataclasses.replace(e, rank=rank) for e in ledger.events]
    out.limit_hits = [f"{h} on rank {rank}" for h in ledger.limit_hits]
    return out


def smoke(rank: int, world_size: int, fail_on_rank: int | None = None) -> dict[str, Any]:
    """A rank function for checking the launcher: one all-reduce of (rank + 1) over the group.
    `fail_on_rank` raises there instead, leaving the other ranks waiting in the all-reduce."""
    if rank == fail_on_rank:
        raise RuntimeError(f"planted failure on rank {rank}")
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"  # NCCL: CUDA only
    t = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(t)
    return {"rank": rank, "world_size": dist.get_world_size(), "backend": dist.get_backend(), "sum": float(t)}


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


def scenario_rank_run(rank: int, world_size: int, args, scenarios: list[Scenario], seed: int = 0) -> list[RankReport]:
    """Per rank, each scenario on a fresh model (`args`: ModelArgs) sharded over all ranks: its
    ledger, limit hits and the error that stopped it, if any."""
    from titan_conformance.compilation import apply_regional_compile
    from titan_conformance.model import Qwen3Model
    from titan_conformance.parallel.tp_plan import apply_tp, tp_mesh
    from titan_conformance.parallel.unwrap import unwrap_async_inputs

    mesh = tp_mesh(world_size)
    results = []
    for sc in scenarios:
        out, ledger = RankReport(rank), CompileLedger()
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
    from titan_conformance.profile import GRPOConfig
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
