"""Pluggable inner attention ops: the only part of the block that differs between roles.

The trainer attends causally over whole (right-padded) sequences; the generator writes keys and
values into a static, preallocated cache and attends over it. Both take q [B, S, H, D] and
k, v [B, S, KV, D] after RoPE and return [B, S, H, D], so the TransformerBlock code is shared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

try:  # registers torch.ops.titan_conformance.decode_attention, the CUDA decode path
    from titan_conformance.model import decode_kernel
except ImportError:  # no Triton (a CPU-only install): every device takes the SDPA path
    decode_kernel = None


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

    Keys/values of each token are written at (row, position) before attending, and a query at
    position p sees cache slots 0..p of its row only, so slots left over from earlier requests or
    from right-padding are never read. The cache shape never changes, which keeps the decode
    step shape-static (and capturable as a CUDA graph).
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

    def cache_rows(self, positions: torch.Tensor) -> torch.Tensor:
        """The cache row each token writes to (vLLM's slot mapping, per row): its own batch row."""
        return torch.arange(positions.shape[0], device=positions.device).unsqueeze(1).expand_as(positions)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
        scale: float | None = None,
    ) -> torch.Tensor:
        """`scale`: of the scores, head_dim ** -0.5 when None (as SDPA)."""
        bsz = q.shape[0]
        rows = self.cache_rows(positions)
        self.k_cache.index_put_((rows, positions), k)
        self.v_cache.index_put_((rows, positions), v)
        keys, values = self.k_cache[:bsz], self.v_cache[:bsz]
        if q.shape[1] == 1:
            return self.decode_attention(q, keys, values, positions, scale)
        n_rep = q.shape[2] // k.shape[2]
        visible = visible_slots(keys.shape[1], positions)
        keys, values = keys.transpose(1, 2), values.transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), _expand_kv(keys, n_rep), _expand_kv(values, n_rep), attn_mask=visible.unsqueeze(1),
            scale=scale,
        )
        return out.transpose(1, 2)

    def warm_up(self, n_heads: int) -> None:
        """Compiles the decode kernel this cache's decode steps launch: one launch for one query on
        the cache's first row (Triton specializes on dtypes and on which integers are 1 or multiples
        of 16; a row's strides do not depend on the batch)."""
        row = self.k_cache[:1]
        q = row.new_zeros(1, 1, n_heads, row.shape[-1])
        self.decode_attention(q, row, self.v_cache[:1], torch.zeros(1, 1, dtype=torch.long, device=row.device))

    @staticmethod
    def decode_attention(
        q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
        scale: float | None = None,
    ) -> torch.Tensor:
        """One query token per row against its cache row: q [B, 1, H, D], keys/values [B, L, KV, D],
        positions [B, 1] -> [B, 1, H, D]. On CUDA our Triton kernel (`decode_kernel.py`: reads only
        each row's visible slots, no mask tensor), elsewhere `grouped_sdpa_decode`."""
        if q.is_cuda and decode_kernel is not None and q.shape[2] // keys.shape[2] <= decode_kernel.MAX_GROUP:
            scale = q.shape[-1] ** -0.5 if scale is None else scale
            return torch.ops.titan_conformance.decode_attention(q, keys, values, positions, scale)
        return grouped_sdpa_decode(q, keys, values, positions, scale)


def visible_slots(length: int, positions: torch.Tensor) -> torch.Tensor:
    """[B, S, L]: a query at position p sees cache slots 0..p of its own row."""
    slots = torch.arange(length, device=positions.device)
    return slots.view(1, 1, -1) <= positions.unsqueeze(-1)


def grouped_sdpa_decode(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Decode attention as one SDPA call, grouped by KV head: the CPU path (and the CUDA one without
    Triton: cuDNN's flash kernel plus two mask kernels, 21 us a layer at batch 40 on an H200).

    The query heads of a KV head's group become that head's query rows (head h = kv * rep + r, as
    in `_expand_kv`), so each cached key and value is read once, instead of expanding K/V to every
    query head (a copy of the whole cache every layer).
    """
    bsz, _, n_heads, head_dim = q.shape
    n_kv = keys.shape[2]
    grouped = q.reshape(bsz, n_kv, n_heads // n_kv, head_dim)  # [B, KV, rep, D]
    visible = visible_slots(keys.shape[1], positions)
    out = F.scaled_dot_product_attention(
        grouped, keys.transpose(1, 2), values.transpose(1, 2), attn_mask=visible.view(bsz, 1, 1, -1), scale=scale
    )
    return out.reshape(bsz, 1, n_heads, head_dim)
