"""A short supervised warm-up on the toy task: a partly competent start for GRPO to sharpen.

A model with random weights samples near-uniformly (over its whole vocabulary, most of which the
task never uses), so every completion earns the same zero reward, GRPO's advantages are all zero
and a trainer step changes nothing that a check could see.
"""

from __future__ import annotations

import random
from typing import Callable

import torch
from torch import nn

from titan_conformance.task.sort_letters import SortLettersTask


def warm_up(
    model: nn.Module, task: SortLettersTask, steps: int, seed: int, batch: int = 64, lr: float = 2e-3,
    after_step: Callable[[int], None] | None = None,
) -> None:
    """Teacher-forced cross-entropy on correct demonstrations (completion tokens only), AdamW.
    `model(tokens [B, S]) -> logits [B, S, V]`; deterministic for a seed. `after_step(k)` is called
    after step k (1-based), e.g. to evaluate a warm-up as it goes."""
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    pad = task.tokenizer.pad_id
    device = params[0].device
    for step in range(1, steps + 1):
        problems = task.sample(rng, batch)
        seqs = [task.demonstration(p) for p in problems]
        width = max(len(s) for s in seqs)
        tokens = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros(len(seqs), width - 1, dtype=torch.bool)
        for i, (p, s) in enumerate(zip(problems, seqs)):
            tokens[i, : len(s)] = torch.tensor(s)
            mask[i, len(p.prompt_ids) - 1 : len(s) - 1] = True
        tokens, mask = tokens.to(device), mask.to(device)
        logits = model(tokens)[:, :-1]
        loss = nn.functional.cross_entropy(logits[mask].float(), tokens[:, 1:][mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(step)
