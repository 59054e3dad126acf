"""The profile option `parallel.unwrap_async`: resolve AsyncCollectiveTensor inputs before each
compiled block, so every block sees a plain Tensor and one graph serves every layer.

A RowwiseParallel output (the embedding's, in our TP plan) comes back from DTensor's `to_local()`
as an AsyncCollectiveTensor (ACT) -- a tensor subclass that waits for its all-reduce on first use.
Block 0 gets that ACT; blocks 1..n get the plain Tensor the previous compiled block returned.
Dynamo guards on the input's type, so one code object shared by all layers compiles once per
type (guard failure `___check_type_id(x, ...), type=<class '...AsyncCollectiveTensor'>`), and
every other reason to recompile (grad mode, a shape class) is then paid twice. With Inductor or
aot_eager, a backward through a block traced on an ACT also fails in DTensor's redistribute
backward on torch 2.13 (`'Tensor' object has no attribute '_local_tensor'`).

`wait_tensor` (not `ACT.wait()`) is used: it returns a plain Tensor that stays on the autograd
graph, with no copy; `ACT.wait()` returns the inner tensor detached from autograd, so gradients
would stop at the embedding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed._functional_collectives import AsyncCollectiveTensor, wait_tensor


def resolve(x: Any) -> Any:
    """An AsyncCollectiveTensor waited on as a plain Tensor (differentiably); else unchanged."""
    return wait_tensor(x) if isinstance(x, AsyncCollectiveTensor) else x


def _pre_hook(module: nn.Module, args: tuple) -> tuple:
    return tuple(resolve(a) for a in args)


def unwrap_async_inputs(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Registers the unwrap as a forward pre-hook on every block of `model`; it runs eagerly,
    before the block's compiled forward. Returns the hook handles."""
    return [block.register_forward_pre_hook(_pre_hook) for block in model.layers]
