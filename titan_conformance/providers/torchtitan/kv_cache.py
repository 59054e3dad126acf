"""Our KV cache as the inner attention of torchtitan's attention block (the generator's side).

A torchtitan `Module`, so that torchtitan's TP plan treats it as the SDPA module it replaces: the
plan puts a local_map on the inner attention (`set_gqa_inner_attention_local_map`), and under TP
the block's head-sharded q/k/v DTensors arrive here as this rank's heads, as they reach vLLM's
paged attention inside torchtitan's vLLM wrapper. Imported only once torchtitan imports.
"""

from __future__ import annotations

from typing import Any

import torch
from torchtitan.protocols.module import Module

from titan_conformance.model.attention import KVCacheAttention


class CacheAttention(Module):
    """Takes torchtitan's inner-attention call `(q, k, v, *, attention_masks, scale, enable_gqa)`;
    the generator passes each token's cache slot as `attention_masks`, which torchtitan's blocks
    hand to the inner attention untouched (vLLM's wrapper reads its slot mapping from its forward
    context instead). The cache itself is attached once the model is on its device (`attach`)."""

    def __init__(self, sharding_config) -> None:
        super().__init__()
        self._sharding_config = sharding_config
        self.cache: KVCacheAttention | None = None

    def attach(self, cache: KVCacheAttention) -> None:
        self.cache = cache

    def forward(self, q_BLNH: torch.Tensor, k_BLNH: torch.Tensor, v_BLNH: torch.Tensor, *,
                attention_masks: torch.Tensor, scale: float | None = None, **_: Any) -> torch.Tensor:
        return self.cache(q_BLNH, k_BLNH, v_BLNH, attention_masks, scale)
