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

from titan_conformance.profile.compile_config import CompileConfig
from titan_conformance.compilation.ledger import CompileLedger
from titan_conformance.model.qwen3 import Qwen3Model, TransformerBlock

_copies = itertools.count()


def _private_function(fn: types.FunctionType, name: str) -> types.FunctionType:
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def private_region(ledger: CompileLedger, role: str, block_name: str, settings: dict) -> tuple[str, str]:
    """(region, code-object name) for a new compiled region of `role`, registered with `ledger`
    together with the compile settings it uses (so trainer and generator can be compared)."""
    region = f"{role}.{block_name}"
    name = f"{block_name}_forward__{role}_{next(_copies)}"
    ledger.register(name, region, settings)
    return region, name


def make_forward_private(blocks, name: str) -> None:
    """Gives `blocks` (all of one class) a subclass whose forward is a private copy named `name`,
    for code that compiles blocks itself (e.g. with `Module.compile`): the blocks run the same code
    but have a Dynamo cache and recompile budget of their own."""
    blocks = list(blocks)
    cls = type(blocks[0])
    private = type(f"{cls.__name__}__{name}", (cls,), {"forward": _private_function(cls.forward, name)})
    for block in blocks:
        block.__class__ = private


def apply_regional_compile(
    model: Qwen3Model, config: CompileConfig, ledger: CompileLedger, role: str
) -> str | None:
    """Compiles every block of `model` in place; returns the region name (None when disabled)."""
    if not config.enable:
        ledger.record_uncompiled(f"{role}.TransformerBlock")
        return None
    ledger.use_recompile_limit(config.recompile_limit)
    region, name = private_region(ledger, role, "TransformerBlock", config.settings())
    forward = _private_function(TransformerBlock.forward, name)
    backend = ledger.backend(region, config.backend, config.dynamic)
    for block in model.layers:
        block.forward = torch.compile(
            types.MethodType(forward, block),
            backend=backend,
            mode=config.mode,
            options=config.options or None,
            fullgraph=config.fullgraph,
            dynamic=config.dynamic,
        )
    return region
