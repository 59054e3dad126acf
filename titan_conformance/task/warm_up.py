"""A short supervised warm-up on the toy task: a partly competent start for GRPO to sharpen.

A model with random weights samples near-uniformly (over its whole vocabulary, most of which the
task never uses), so every completion earns the same zero reward, GRPO's advantages are all zero
and a trainer step changes nothing that a check could see.

Every step has the same shapes (a fixed-width batch, the loss over every position with the prompt
and padding ignored), so on CUDA the whole step — forward, backward and AdamW — is captured once
as a CUDA graph and replayed: an eager step of the 0.6B shape took ~170 ms on an H200 (40 in
6.9 s), most of it Python launching thousands of small kernels.
"""

from __future__ import annotations

import random
import warnings
from typing import Callable

import torch
from torch import nn

from titan_conformance.task.sort_letters import SortLettersTask

IGNORED = -100
"""The target of a position the loss skips (cross_entropy's ignore_index)."""
EAGER_STEPS = 3
"""Steps run eagerly on a side stream before the capture, as CUDA graph capture needs: cuBLAS
handles, autograd's and AdamW's lazily built state exist before capture begins."""


def demonstrations(task: SortLettersTask, rng: random.Random, batch: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` correct demonstrations right-padded to `width`, and their targets: the next token
    where it is a completion token, IGNORED elsewhere (prompt and padding)."""
    tokens = torch.full((batch, width), task.tokenizer.pad_id, dtype=torch.long)
    targets = torch.full((batch, width - 1), IGNORED, dtype=torch.long)
    for i, problem in enumerate(task.sample(rng, batch)):
        seq = task.demonstration(problem)
        tokens[i, : len(seq)] = torch.tensor(seq)
        start = len(problem.prompt_ids) - 1
        targets[i, start : len(seq) - 1] = tokens[i, start + 1 : len(seq)]
    return tokens, targets


def warm_up(
    model: nn.Module, task: SortLettersTask, steps: int, seed: int, batch: int = 64, lr: float = 2e-3,
    after_step: Callable[[int], None] | None = None, graphed: bool | None = None,
) -> int:
    """Teacher-forced cross-entropy on correct demonstrations (completion tokens only), AdamW.
    `model(tokens [B, S]) -> logits [B, S, V]`; deterministic for a seed. `after_step(k)` is called
    after step k (1-based), e.g. to evaluate a warm-up as it goes. `graphed`: replay the steps after
    the first EAGER_STEPS from a CUDA graph (None: on CUDA; the same kernels either way). Returns
    how many steps were graph replays."""
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    on_cuda = device.type == "cuda"
    graphed = on_cuda and steps > EAGER_STEPS and graphed is not False
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, capturable=on_cuda)
    width = task.demonstration_width
    tokens = torch.empty(batch, width, dtype=torch.long, device=device)
    targets = torch.empty(batch, width - 1, dtype=torch.long, device=device)

    def train_step() -> None:
        logits = model(tokens)[:, :-1].float()
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORED)
        loss.backward()
        opt.step()

    stream = torch.cuda.Stream(device) if graphed else None
    graph, replays = None, 0
    for step in range(1, steps + 1):
        for static, new in zip((tokens, targets), demonstrations(task, rng, batch, width)):
            static.copy_(new)
        if graph is not None:
            graph.replay()
            replays += 1
        else:
            if stream is not None:
                stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream), warnings.catch_warnings():  # (None: no stream, as on a CPU)
                # capturable=True on every CUDA step, so that eager and replayed steps run the same kernels.
                warnings.filterwarnings("ignore", "This instance was constructed with capturable=True")
                opt.zero_grad(set_to_none=True)
                train_step()
            if stream is not None:
                torch.cuda.current_stream(device).wait_stream(stream)
        if graphed and step == EAGER_STEPS:
            graph = _capture(train_step, opt)
        if after_step is not None:
            after_step(step)
    opt.zero_grad(set_to_none=True)
    if on_cuda:  # the graph's pool and AdamW's state (a side stream's blocks) go back to the device
        torch.cuda.synchronize(device)
        del graph, opt
        torch.cuda.empty_cache()
    return replays


def _capture(train_step: Callable[[], None], opt: torch.optim.Optimizer) -> torch.cuda.CUDAGraph | None:
    """One training step recorded (not run) as a CUDA graph; its gradients live in the graph's
    pool. thread_local: the warm start may launch its kernels from its own thread meanwhile. None,
    with a warning, where a model's step cannot be captured (a host sync in it): the warm-up then
    goes on eagerly, to the same weights."""
    opt.zero_grad(set_to_none=True)
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.current_stream()
    try:
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            train_step()
    except RuntimeError as e:
        # A failed capture's exit raises before torch.cuda.graph restores the caller's stream.
        torch.cuda.set_stream(stream)
        torch.cuda.synchronize()
        opt.zero_grad(set_to_none=True)
        warnings.warn(f"The task warm-up runs eagerly: its step could not be captured as a CUDA graph ({e}).", stacklevel=3)
        return None
    return graph
