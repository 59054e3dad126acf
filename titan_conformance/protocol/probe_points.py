"""The probe points of the `activations` capability: named intermediate tensors of a forward, the
same names on every side (trainer, generator, an eager reference copy), in forward order.

A provider returns each point as a [tokens, ...] tensor over the probed sequences' tokens (prompt
then completion, sequence after sequence), whatever layout its forward used (padded rows, one flat
row), so that two sides compare entry by entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

EMBEDDING = "embedding"
FINAL_NORM = "final_norm"
LOGITS = "logits"
LOGPROBS = "logprobs"
"""Each side's logprob of every completion token from its own forward, at its own temperature."""
SAMPLED_LOGPROBS = "sampled_logprobs"
"""The logprobs as reported with the sampled tokens (the generator's sampler; the trainer's own)."""

BLOCK_POINTS = {
    "attn_norm": "the attention input norm",
    "q_norm": "q after its norm",
    "k_norm": "k after its norm",
    "q_rope": "q after RoPE",
    "k_rope": "k after RoPE",
    "attention": "the attention output (before the output projection)",
    "attn_residual": "the residual after attention",
    "mlp_norm": "the MLP input norm",
    "mlp": "the MLP output",
    "block_output": "the block output",
}
"""Inside every block, in forward order: point -> what it is."""


def block_point(layer: int, point: str) -> str:
    return f"blocks.{layer}.{point}"


def probe_points(n_layers: int) -> list[str]:
    """Every point's name, in forward order."""
    inner = [block_point(i, p) for i in range(n_layers) for p in BLOCK_POINTS]
    return [EMBEDDING, *inner, FINAL_NORM, LOGITS, LOGPROBS, SAMPLED_LOGPROBS]


def split_point(name: str) -> tuple[int | None, str]:
    """"blocks.3.q_rope" -> (3, "q_rope"); "logits" -> (None, "logits")."""
    if name.startswith("blocks."):
        _, layer, point = name.split(".", 2)
        return int(layer), point
    return None, name


def describe_point(name: str) -> str:
    """"blocks.0.q_rope" -> "block 0, q after RoPE"."""
    layer, point = split_point(name)
    if layer is None:
        return {EMBEDDING: "the embedding output", FINAL_NORM: "the final norm", LOGITS: "the logits",
                LOGPROBS: "the logprobs of the tokens", SAMPLED_LOGPROBS: "the logprobs reported with the sampled tokens"}[point]
    return f"block {layer}, {BLOCK_POINTS[point]}"


@dataclass
class Activations:
    """What one side computed at the probe points for some sequences (CPU tensors)."""

    points: dict[str, torch.Tensor]
    """Probe point -> [tokens, ...] (the logprob points: [completion tokens])."""
    replay_mean_abs: dict[int, float] = field(default_factory=dict)
    """Where the points inside a block come from an eager re-execution of that block (its compiled
    graph has no seams to observe): per block, mean |replayed - observed| of the block output, the
    grounding of the points inside it."""
