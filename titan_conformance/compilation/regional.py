"""Regional compilation: each TransformerBlock compiled on its own, one graph for all layers.

Dynamo caches compiled graphs, and counts recompiles against `recompile_limit`, per code object.
In a real RL deployment the trainer and the generator are separate processes, so each has its own
cache and its own budget. Here both live in one process, so each (ledger, role) gets a private copy
of `TransformerBlock.forward`'s code object, with a name of its own: every layer of a role shares it
(regional reuse), while roles and systems never share a cache entry or a recompile budget.
"""

from __future__ import annotations

import itertools
import types

import torch

from titan_conformance.compilation.config import CompileConfig
from titan_conformance.compilation.ledger import CompileLedger
from titan_conformance.model.qwen3 import Qwen3Model, TransformerBlock

_copies = itertools.count()


def _private_function(fn: types.FunctionType, name: str) -> types.FunctionType:
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def apply_regional_compile(
    model: Qwen3Model, config: CompileConfig, ledger: CompileLedger, role: str
) -> str | None:
    """Compiles every block of `model` in place; returns the region name (None when disabled)."""
    if not config.enable:
        return None
    torch._dynamo.config.recompile_limit = config.recompile_limit
    region = f"{role}.TransformerBlock"
    name = f"TransformerBlock_forward__{role}_{next(_copies)}"
    ledger.register(name, region)
    forward = _private_function(TransformerBlock.forward, name)
    backend = ledger.backend(region, config.backend)
    for block in model.layers:
        block.forward = torch.compile(
            types.MethodType(forward, block),
            backend=backend,
            fullgraph=config.fullgraph,
            dynamic=config.dynamic,
        )
    return region
