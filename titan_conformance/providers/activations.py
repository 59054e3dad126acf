"""Probing a side's real forward at the protocol's probe points without touching what it compiled.

Regional compile compiles each block on its own and the model calls its blocks one after another
from eager Python. While probing, each block's slot in the model's layer container holds a stand-in
(`_ObservedBlock`) that calls the block exactly as the model would (its compiled call, on the
side's real path: the trainer's training forward, the generator's prefill over its KV cache) and
records the block's input and output: the stand-in runs in the model's eager Python, outside every
compiled function, so no graph, guard or compile count changes. Inside a block the compiled graph
has no seams, so the points inside it come from an eager re-execution of the block's own (class)
forward on the observed input, with the side's own modules (weights, norm eps, fused projections,
inner attention): hooks on its submodules exist only during that re-execution. The re-execution's
output is held against the compiled block's (`Activations.replay_mean_abs`), which grounds the points
inside the block. The embedding, the final norm and the logits run eagerly in the model and are read
by hooks on those modules.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from titan_conformance.errors import ConformanceError
from titan_conformance.protocol.probe_points import (
    EMBEDDING, FINAL_NORM, LOGITS, LOGPROBS, SAMPLED_LOGPROBS, Activations, block_point,
)


@dataclass(frozen=True)
class ProbeSites:
    """Where a model computes the probe points, as module paths (`nn.Module.get_submodule`)."""

    embedding: str
    """The token embedding module (its output)."""
    final_norm: str
    """The norm after the last block (its output)."""
    layers: str
    """The container of the blocks (a ModuleList or ModuleDict), in forward order."""
    block: dict[str, tuple[str, int | None]]
    """Probe point inside a block -> (submodule path in the block, which positional input of it is
    the point; None: its output)."""


def token_index(lengths: list[int], width: int, device: torch.device) -> torch.Tensor:
    """Where each real token sits once a forward's leading [rows, width] dims are flattened (row r
    of a right-padded batch, or of one flat row of r x width tokens): r * width + position."""
    return torch.cat([torch.arange(n) + r * width for r, n in enumerate(lengths)]).to(device)


class _Recorder:
    """Keeps each point's real tokens, [tokens, ...] on the CPU."""

    def __init__(self, index: torch.Tensor) -> None:
        self.index = index
        self.points: dict[str, torch.Tensor] = {}
        self.replay_mean_abs: dict[int, float] = {}

    def tokens(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().flatten(0, 1).index_select(0, self.index)

    def keep(self, name: str, t: torch.Tensor) -> None:
        if name in self.points:  # the token index is one forward's: a second would be read through it wrongly
            raise ConformanceError(f"the model ran more than one forward while probed ({name} twice)")
        self.points[name] = self.tokens(t).cpu()


class _ObservedBlock(nn.Module):
    """Block `layer`'s stand-in in its container while probing (see the module's docstring)."""

    def __init__(self, block: nn.Module, layer: int, sites: ProbeSites, recorder: _Recorder) -> None:
        super().__init__()
        object.__setattr__(self, "block", block)  # not a submodule: the model's tree is the model's
        self.layer, self.sites, self.recorder = layer, sites, recorder

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        self._replay(args, kwargs, out)
        return out

    def _replay(self, args, kwargs, out: torch.Tensor) -> None:
        block, rec = self.block, self.recorder
        handles = []
        for point, (path, arg) in self.sites.block.items():
            name, module = block_point(self.layer, point), block.get_submodule(path)
            if arg is None:
                handles.append(module.register_forward_hook(lambda _m, _a, o, name=name: rec.keep(name, o)))
            else:
                handles.append(module.register_forward_pre_hook(lambda _m, a, name=name, k=arg: rec.keep(name, a[k])))
        try:
            with torch.no_grad():
                replayed = type(block).forward(block, *args, **kwargs)  # the class's, uncompiled
        finally:
            for handle in handles:
                handle.remove()
        rec.keep(block_point(self.layer, "block_output"), out)
        rec.replay_mean_abs[self.layer] = float((rec.tokens(replayed).double() - rec.tokens(out).double()).abs().mean())


@contextlib.contextmanager
def probing(model: nn.Module, sites: ProbeSites, index: torch.Tensor) -> Iterator[_Recorder]:
    """While inside, every forward of `model` records the probe points of the tokens at `index`
    (`token_index`); the model is restored on exit, whatever happens."""
    rec = _Recorder(index)
    layers = model.get_submodule(sites.layers)
    blocks = list(layers.named_children())
    handles = [
        model.get_submodule(sites.embedding).register_forward_hook(lambda _m, _a, o: rec.keep(EMBEDDING, o)),
        model.get_submodule(sites.final_norm).register_forward_hook(lambda _m, _a, o: rec.keep(FINAL_NORM, o)),
        model.register_forward_hook(lambda _m, _a, o: rec.keep(LOGITS, o)),
    ]
    try:
        for layer, (name, block) in enumerate(blocks):
            setattr(layers, name, _ObservedBlock(block, layer, sites, rec))
        yield rec
    finally:
        for name, block in blocks:
            setattr(layers, name, block)
        for handle in handles:
            handle.remove()


def recorded(rec: _Recorder, logprobs: torch.Tensor, sampled: torch.Tensor) -> Activations:
    """The recorder's points with the side's logprobs of the completion tokens and those it reported
    with the sampled tokens (flat, in the same order)."""
    return Activations({**rec.points, LOGPROBS: logprobs, SAMPLED_LOGPROBS: sampled}, dict(rec.replay_mean_abs))
