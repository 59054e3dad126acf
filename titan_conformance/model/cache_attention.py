"""`titan_conformance::cache_attention`: every query token attends over its own KV-cache row.

A token's cache slot is row * L + position (L: the cache length, vLLM's slot mapping per row); it
sees slots 0..position of its row. Prefill and decode tokens are the same kind of query, so the
generator's compiled block has one graph for both. A custom op: Dynamo and Inductor see one opaque
call, and a FULL CUDA graph captures it as such. On CUDA it runs our Triton kernel
(`cache_attention_kernel.py`); elsewhere, or without Triton, `sdpa_cache_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from titan_conformance.model.cache_attention_kernel import MAX_GROUP, launch_cache_attention
except ImportError:  # no Triton (a CPU-only install): every device takes the SDPA path
    launch_cache_attention = None

GATHER_ELEMENTS = 1 << 24
"""Most cache elements `sdpa_cache_attention` gathers at once (queries are taken in chunks)."""


def sdpa_cache_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, scale: float
) -> torch.Tensor:
    """The op in PyTorch: each query's cache row gathered, slots past its position masked, one SDPA
    per chunk of queries with the query heads of a KV head's group as that head's query rows (head
    h = kv * rep + r), so K/V are never expanded to every query head."""
    n_tokens, n_heads, head_dim = q.shape
    length, n_kv = k_cache.shape[1], k_cache.shape[2]
    rows, last = slots.div(length, rounding_mode="floor"), slots.remainder(length)
    visible = torch.arange(length, device=q.device) <= last.unsqueeze(-1)  # [N, L]
    chunk = max(1, GATHER_ELEMENTS // k_cache[0].numel())
    out = q.new_empty(q.shape)
    for start in range(0, n_tokens, chunk):
        part = slice(start, start + chunk)
        grouped = q[part].unflatten(1, (n_kv, n_heads // n_kv))  # [n, KV, rep, D]
        keys, values = (cache[rows[part]].transpose(1, 2) for cache in (k_cache, v_cache))  # [n, KV, L, D]
        attended = F.scaled_dot_product_attention(
            grouped, keys, values, attn_mask=visible[part].view(-1, 1, 1, length), scale=scale
        )
        out[part] = attended.flatten(1, 2)
    return out


@torch.library.custom_op("titan_conformance::cache_attention", mutates_args=())
def cache_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, scale: float
) -> torch.Tensor:
    """q [N, H, D]; k_cache/v_cache [rows, L, KV, D]; slots [N] -> [N, H, D]."""
    return sdpa_cache_attention(q, k_cache, v_cache, slots, scale)


@cache_attention.register_fake
def _(q, k_cache, v_cache, slots, scale):
    return q.new_empty(q.shape)  # contiguous, as every implementation returns


if launch_cache_attention is not None:

    @cache_attention.register_kernel("cuda")
    def _(q, k_cache, v_cache, slots, scale):
        if q.shape[1] // k_cache.shape[2] > MAX_GROUP:
            return sdpa_cache_attention(q, k_cache, v_cache, slots, scale)
        return launch_cache_attention(q, k_cache, v_cache, slots, scale)
