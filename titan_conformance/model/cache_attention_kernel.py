"""The generator's CUDA attention over the KV cache: one Triton program per (tile of query tokens, KV head).

Every query token, prefill or decode, carries its cache slot (row * cache length + position) and
attends over slots 0..position of that row, after the block has written the step's keys and values.
So one kernel, and one compiled graph around it, serves prefill and decode alike (as vLLM's unified
attention does): a prefill of B rows x S tokens is B * S queries, a decode step B queries.

A program holds a tile of consecutive tokens times its KV head's group of query heads (at least 16
rows, the tl.dot tile height) and walks the cache rows its tokens belong to, BLOCK_L slots at a
time through `tl.dot`, with an online softmax in fp32: no mask tensor, and no read of slots past
the furthest position. A decode step (no more tokens than cache rows) runs a token per program, so
every row starts at once; otherwise a program takes PREFILL_TILE query rows (32 tokens of a 2-head
group), so a prompt's keys and values are read once per 32 tokens, not once per token. Tokens may
come in any order and mix rows (a tile then walks each row it touches; a row's values never reach
another row's queries, not even as a zero times a non-finite value). As in any flash-style
kernel, a non-finite value at a slot that a later token of the same tile sees still turns an
earlier token's output NaN (zero weight times inf): a sequence whose keys or values are
non-finite is broken either way, and stays visible.

Measured at the qwen3-0.6b decode shape (batch 40, 8 KV heads x 2 query heads, head_dim 128, cache
length 128, rows at positions spread over 20..127; 28 layers in one CUDA graph, H200): 8.4 us a
layer at BLOCK_L=64, 4 warps, 2 stages (8.3 in a later call), against 7.7 for the decode-only
kernel this one grew from, 20.9 for Inductor-compiled SDPA with a mask and 13.6 for compiled flex
attention (`benchmarks/decode_microbench.py`). A prefill of 8 x 1024 tokens: 251 us a layer in tiles, 2.3-2.9
ms a token per program, 84-87 for causal flash SDPA over dense [B, H, S, D].

`model/cache_attention.py` registers it as the CUDA kernel of the custom op
`titan_conformance::cache_attention`, which Dynamo and Inductor treat as one opaque call inside the
compiled block, and a FULL CUDA graph captures as one launch; the compile cache file carries its
binaries beside Inductor's (`compilation/triton_kernels.py`). (As a `torch.library.triton_op`
Inductor would compile it into the block's code; on torch 2.11 Inductor passes `scale` as fp64 and
the online softmax's loop-carried fp32 state then fails to compile: an fp32 cast of the scores is
the fix to try.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


MAX_GROUP = 16
"""Query heads per KV head that a program holds (the tl.dot tile height for one token)."""

PREFILL_TILE = 64
"""Query rows (tokens x heads of a group) of a program when some cache row has several tokens."""


@triton.jit
def _attend_row(
    q, acc, running_max, denominator, k_row, v_row, mine, last, dims, dim_ok,
    stride_kl, stride_kd, stride_vl, stride_vd, scale, BLOCK_L: tl.constexpr,
):
    """The online softmax of the tile's queries in one cache row (`mine`) over that row's slots
    0..last, BLOCK_L at a time; k_row/v_row point at the row's first slot of this KV head. Other
    rows' queries keep their state untouched: a zero weight times a non-finite value would be NaN,
    so one sequence's inf would spread to its tile's other sequences."""
    end = tl.max(tl.where(mine, last, -1))  # the furthest visible slot of this row's queries
    for start in range(0, end + 1, BLOCK_L):
        slots = start + tl.arange(0, BLOCK_L)
        kv_mask = (slots <= end)[:, None] & dim_ok[None, :]
        k = tl.load(k_row + slots[:, None] * stride_kl + dims[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_row + slots[:, None] * stride_vl + dims[None, :] * stride_vd, mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # [TILE, BLOCK_L], fp32 accumulation
        scores = tl.where(mine[:, None] & (slots[None, :] <= last[:, None]), scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # a query with nothing visible yet
        probs = tl.exp(scores - shift[:, None])
        rescale = tl.exp(running_max - shift)
        acc = tl.where(mine[:, None], acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision="ieee"), acc)
        denominator = denominator * rescale + tl.sum(probs, axis=1)
        running_max = new_max
    return acc, running_max, denominator


@triton.jit(do_not_specialize=["n_tokens"])
def _cache_attention_kernel(
    q_ptr, k_ptr, v_ptr, slot_ptr, out_ptr,
    stride_qn, stride_qh, stride_qd,
    stride_kr, stride_kl, stride_kh, stride_kd,
    stride_vr, stride_vl, stride_vh, stride_vd,
    stride_s, stride_on, stride_oh, stride_od,
    n_tokens, cache_len, scale,
    REP: tl.constexpr, GROUP_P: tl.constexpr, TOKENS: tl.constexpr, TILE: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # Tile row m holds query head (kv_head * REP + m % GROUP_P) of token (program * TOKENS + m // GROUP_P).
    tile, kv_head = tl.program_id(0).to(tl.int64), tl.program_id(1)  # int64: offsets in a big cache pass 2**31
    m = tl.arange(0, TILE)
    token = tile * TOKENS + m // GROUP_P
    rep = m % GROUP_P
    ok = (m < TOKENS * GROUP_P) & (rep < REP) & (token < n_tokens)
    slot = tl.load(slot_ptr + token * stride_s, mask=ok, other=0).to(tl.int64)
    row = tl.where(ok, slot // cache_len, -1)  # each query's cache row; its slots 0..last are visible
    last = tl.where(ok, slot % cache_len, -1)
    heads = kv_head * REP + rep
    dims = tl.arange(0, HEAD_DIM_P)
    dim_ok = dims < HEAD_DIM
    q = tl.load(
        q_ptr + token[:, None] * stride_qn + heads[:, None] * stride_qh + dims[None, :] * stride_qd,
        mask=ok[:, None] & dim_ok[None, :], other=0.0,
    )
    acc = tl.zeros([TILE, HEAD_DIM_P], tl.float32)
    running_max = tl.full([TILE], float("-inf"), tl.float32)
    denominator = tl.zeros([TILE], tl.float32)
    if TOKENS == 1:  # a decode step: one row, no loop around the slot loop (which keeps it pipelined)
        r = tl.max(row)
        acc, running_max, denominator = _attend_row(
            q, acc, running_max, denominator, k_ptr + r * stride_kr + kv_head * stride_kh,
            v_ptr + r * stride_vr + kv_head * stride_vh, ok, last, dims, dim_ok,
            stride_kl, stride_kd, stride_vl, stride_vd, scale, BLOCK_L,
        )
    else:  # the rows the tile's tokens belong to, one after the other (one or two for a long prompt)
        for r in range(tl.min(tl.where(ok, row, 2**62)), tl.max(row) + 1):
            acc, running_max, denominator = _attend_row(
                q, acc, running_max, denominator, k_ptr + r * stride_kr + kv_head * stride_kh,
                v_ptr + r * stride_vr + kv_head * stride_vh, row == r, last, dims, dim_ok,
                stride_kl, stride_kd, stride_vl, stride_vd, scale, BLOCK_L,
            )
    out = acc / tl.where(denominator > 0, denominator, 1.0)[:, None]
    tl.store(
        out_ptr + token[:, None] * stride_on + heads[:, None] * stride_oh + dims[None, :] * stride_od,
        out.to(out_ptr.dtype.element_ty), mask=ok[:, None] & dim_ok[None, :],
    )


def launch_cache_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, scale: float,
    block_l: int = 64, num_warps: int = 4, num_stages: int = 2, tokens_per_program: int | None = None,
) -> torch.Tensor:
    """q [N, H, D]; k_cache/v_cache [rows, L, KV, D]; slots [N] (row * L + position) -> [N, H, D].

    `tokens_per_program` (default: chosen from the shapes): 1 when there are no more tokens than
    cache rows (a decode step: every program starts at once), else as many as fill PREFILL_TILE
    query rows (32 for groups of 2 query heads), so a prompt's keys and values are read once per
    tile instead of once per token."""
    n_tokens, n_heads, head_dim = q.shape
    n_kv = k_cache.shape[2]
    rep = n_heads // n_kv
    if rep > MAX_GROUP:
        raise ValueError(f"cache attention supports up to {MAX_GROUP} query heads per KV head, not {rep}")
    out = q.new_empty(q.shape)
    if n_tokens == 0:
        return out
    group = triton.next_power_of_2(rep)
    most = max(1, PREFILL_TILE // group)
    if tokens_per_program is None:
        tokens_per_program = 1 if n_tokens <= k_cache.shape[0] else most
    if not 1 <= tokens_per_program <= most:
        raise ValueError(f"tokens_per_program must be 1..{most} for groups of {rep} query heads, not {tokens_per_program}")
    tile = max(16, triton.next_power_of_2(tokens_per_program * group))  # tl.dot needs 16 rows
    _cache_attention_kernel[(triton.cdiv(n_tokens, tokens_per_program), n_kv)](
        q, k_cache, v_cache, slots, out,
        *q.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        slots.stride(0), *out.stride(),
        n_tokens, k_cache.shape[1], scale,
        REP=rep, GROUP_P=group, TOKENS=tokens_per_program, TILE=tile,
        HEAD_DIM=head_dim, HEAD_DIM_P=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_L=block_l, num_warps=num_warps, num_stages=num_stages,
    )
    return out
