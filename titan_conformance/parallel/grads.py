"""Gradient clipping over a model whose parameters are part DTensor (TP-sharded), part plain."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.experimental import implicit_replication


def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` (L2) that also takes a mix of DTensor and plain parameters,
    which torch's own refuses (`_foreach_norm got mixed torch.Tensor and DTensor`). The global norm
    is the norm of the per-group norms; a DTensor group's norm is made full (replicated) first, as
    torchtitan does. Without DTensor gradients this is torch's function itself."""
    params = [p for p in parameters if p.grad is not None]
    sharded = [p for p in params if isinstance(p.grad, DTensor)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    plain = [p for p in params if not isinstance(p.grad, DTensor)]
    norm = torch.nn.utils.get_total_norm([p.grad for p in sharded])
    norms = [norm.full_tensor() if isinstance(norm, DTensor) else norm]
    if plain:
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in plain]))
    total = torch.linalg.vector_norm(torch.stack(norms))
    with implicit_replication():
        for group in (sharded, plain):
            if group:
                torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total
