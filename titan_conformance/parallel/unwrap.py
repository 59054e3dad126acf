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

torchtitan's own TP plan on its DTensor backend hits the same case one level down: every block
input is a DTensor, but block 0's holds the embedding's all-reduce as an ACT local tensor and the
others a plain one. Dynamo's guards see only the outer DTensor, so one compiled graph serves both
and its runtime wrapper fails on the one it was not traced for (`'Tensor' object has no attribute
'elem'`, torch 2.13 CPU, gloo) -- a crash, not a recompile. The unwrap waits on that inner ACT too.

`wait_tensor` (not `ACT.wait()`) is used: it returns a plain Tensor that stays on the autograd
graph, with no copy; `ACT.wait()` returns the inner tensor detached from autograd, so gradients
would stop at the embedding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed._functional_collectives import AsyncCollectiveTensor, wait_tensor
from torch.distributed.tensor import DTensor


def resolve(x: Any) -> Any:
    """An AsyncCollectiveTensor waited on as a plain Tensor, a DTensor holding one as a DTensor
    holding a plain Tensor (both differentiably); anything else unchanged."""
    if isinstance(x, AsyncCollectiveTensor):
        return wait_tensor(x)
    if isinstance(x, DTensor) and isinstance(x._local_tensor, AsyncCollectiveTensor):
        # A non-view op below autograd waits on the inner ACT: its result is a plain local tensor
        # without requires_grad, like a compiled block's output (`from_local(wait_tensor(...))`
        # keeps the autograd-tracked local, and Dynamo guards on its requires_grad too).
        return x.clone()
    return x


def _pre_hook(module: nn.Module, args: tuple) -> tuple:
    return tuple(resolve(a) for a in args)


def unwrap_async_inputs(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Registers the unwrap as a forward pre-hook on every block of `model`; it runs eagerly,
    before the block's compiled forward. Returns the hook handles."""
    return [block.register_forward_pre_hook(_pre_hook) for block in model.layers]


def unwrap_async_output(module: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """The unwrap at the producer: `module`'s output resolved by a forward hook. For blocks compiled
    with `Module.compile` (torchtitan's apply_compile), whose own hooks run inside the compiled call
    (Dynamo traces them as frames of their own, guarding on the same inner type), so the type must
    be settled before the blocks are called: at the embedding, the one uncompiled module whose
    all-reduce feeds block 0."""
    return module.register_forward_hook(lambda _module, _args, out: resolve(out))
