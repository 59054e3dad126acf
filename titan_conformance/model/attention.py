"""Pluggable inner attention ops: the only part of the block that differs between roles.

The trainer attends causally over whole (right-padded) sequences; the generator writes keys and
values into a static, preallocated cache and attends over it. Both take q [B, S, H, D],
k, v [B, S, KV, D] after RoPE and a per-token index [B, S] (the trainer's positions, the
generator's cache slots), and return [B, S, H, D], so the TransformerBlock code is shared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from titan_conformance.model.cache_attention import cache_attention


def _expand_kv(t: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, KV, L, D] -> [B, KV * n_rep, L, D] for grouped-query attention."""
    return t if n_rep == 1 else t.repeat_interleave(n_rep, dim=1)


class CausalAttention(nn.Module):
    """Causal SDPA over the given sequences (trainer side)."""

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        n_rep = q.shape[2] // k.shape[2]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            q, _expand_kv(k, n_rep), _expand_kv(v, n_rep), is_causal=True
        )
        return out.transpose(1, 2)


class KVCacheAttention(nn.Module):
    """Attention over a static per-layer KV cache (generator side).

    Its per-token input is the token's cache slot (row * max_len + position; the generator's slot
    mapping) where the trainer's is the position. Keys/values of each token are written at their
    slot before attending, and a query at position p sees slots 0..p of its row only, so slots left
    over from earlier requests or from right-padding are never attended to. Prefill and decode
    tokens take the same path (`cache_attention`), so the block compiles once for both. The cache
    shape never changes, which keeps the decode step capturable as a CUDA graph.
    """

    def __init__(
        self,
        max_batch: int,
        max_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        super().__init__()
        shape = (max_batch, max_len, n_kv_heads, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, scale: float | None = None
    ) -> torch.Tensor:
        """q [B, S, H, D], k/v [B, S, KV, D], slots [B, S] -> [B, S, H, D]. `scale`: of the scores,
        head_dim ** -0.5 when None (as SDPA)."""
        length = self.k_cache.shape[1]
        where = (slots.div(length, rounding_mode="floor"), slots.remainder(length))
        self.k_cache.index_put_(where, k)
        self.v_cache.index_put_(where, v)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return self.attend(q.flatten(0, 1), self.k_cache, self.v_cache, slots.flatten(), scale).view(q.shape)

    attend = staticmethod(cache_attention)
    """(q [N, H, D], k_cache, v_cache, slots [N], scale) -> [N, H, D]; a benchmark swaps it."""

    def warm_up(self, n_heads: int) -> None:
        """Compiles the kernel variants this cache's forwards launch: a token per program (no more
        tokens than cache rows: a decode step) and tiles of tokens (a prefill), one launch each on
        the cache's first slot. Triton specializes on dtypes, on its tile sizes and on which
        integers are 1 or multiples of 16; no stride it sees depends on the number of tokens, which
        it does not specialize on."""
        for tokens in (1, self.k_cache.shape[0] + 1):
            q = self.k_cache.new_zeros(tokens, n_heads, self.k_cache.shape[-1])
            slots = torch.zeros(tokens, dtype=torch.long, device=q.device)
            self.attend(q, self.k_cache, self.v_cache, slots, q.shape[-1] ** -0.5)
