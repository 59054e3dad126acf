"""The generator's CUDA attention over the KV cache: one Triton program per (query token, KV head).

Every query token, prefill or decode, carries its cache slot (row * cache length + position) and
attends over slots 0..position of that row, after the block has written the step's keys and values.
So one kernel, and one compiled graph around it, serves prefill and decode alike (as vLLM's unified
attention does): a prefill of B rows x S tokens is B * S queries, a decode step B queries.

Each program loads its KV head's group of query heads once (padded to MAX_GROUP = 16 rows, the
tl.dot tile height), reads BLOCK_L slots at a time through `tl.dot`, and keeps an online softmax in
fp32: no mask tensor, and no read of slots past the position.

Measured at the qwen3-0.6b decode shape (batch 40, 8 KV heads x 2 query heads, head_dim 128, cache
length 128, rows at positions spread over 20..127; 28 layers in one CUDA graph, H200), as the
decode-only kernel this one grew from: 8.0 us a layer at BLOCK_L=64, 4 warps, 2 stages (7.5-11.8
across block sizes 32-128, 4-8 warps, 1-3 stages), against 21.0 for Inductor-compiled SDPA with a
mask and 13.6 for compiled flex attention (`benchmarks/decode_microbench.py`). In the generator's
decode graph this kernel takes 7.8 us a layer (7.6 before).

`model/cache_attention.py` registers it as the CUDA kernel of the custom op
`titan_conformance::cache_attention`, which Dynamo and Inductor treat as one opaque call inside the
compiled block, and a FULL CUDA graph captures as one launch. (As a `torch.library.triton_op`
Inductor would compile it into the block's code, and a restored compile cache would bring it along;
on torch 2.11 Inductor passes `scale` as fp64 and the online softmax's loop-carried fp32 state then
fails to compile: an fp32 cast of the scores is the fix to try.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


MAX_GROUP = 16
"""Query heads per KV head that one program holds (the padded tile height)."""


@triton.jit
def _cache_attention_kernel(
    q_ptr, k_ptr, v_ptr, slot_ptr, out_ptr,
    stride_qn, stride_qh, stride_qd,
    stride_kr, stride_kl, stride_kh, stride_kd,
    stride_vr, stride_vl, stride_vh, stride_vd,
    stride_s, stride_on, stride_oh, stride_od,
    cache_len, scale,
    REP: tl.constexpr, GROUP_P: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, BLOCK_L: tl.constexpr,
):
    token, kv_head = tl.program_id(0).to(tl.int64), tl.program_id(1)  # int64: offsets in a big cache pass 2**31
    slot = tl.load(slot_ptr + token * stride_s).to(tl.int64)
    row, last = slot // cache_len, slot % cache_len  # this token's cache row; slots 0..last are visible
    group = tl.arange(0, GROUP_P)  # the group's query heads, padded to the tl.dot tile height
    heads = kv_head * REP + group  # query head h = kv_head * rep + r
    dims = tl.arange(0, HEAD_DIM_P)
    head_ok = group < REP
    dim_ok = dims < HEAD_DIM
    q = tl.load(
        q_ptr + token * stride_qn + heads[:, None] * stride_qh + dims[None, :] * stride_qd,
        mask=head_ok[:, None] & dim_ok[None, :], other=0.0,
    )
    running_max = tl.full([GROUP_P], float("-inf"), tl.float32)
    denominator = tl.zeros([GROUP_P], tl.float32)
    acc = tl.zeros([GROUP_P, HEAD_DIM_P], tl.float32)
    for start in range(0, last + 1, BLOCK_L):
        slots = start + tl.arange(0, BLOCK_L)
        slot_ok = slots <= last
        kv_mask = slot_ok[:, None] & dim_ok[None, :]
        k = tl.load(
            k_ptr + row * stride_kr + slots[:, None] * stride_kl + kv_head * stride_kh + dims[None, :] * stride_kd,
            mask=kv_mask, other=0.0,
        )
        v = tl.load(
            v_ptr + row * stride_vr + slots[:, None] * stride_vl + kv_head * stride_vh + dims[None, :] * stride_vd,
            mask=kv_mask, other=0.0,
        )
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # [GROUP_P, BLOCK_L], fp32 accumulation
        scores = tl.where(slot_ok[None, :], scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        probs = tl.exp(scores - new_max[:, None])
        rescale = tl.exp(running_max - new_max)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision="ieee")
        denominator = denominator * rescale + tl.sum(probs, axis=1)
        running_max = new_max
    out = acc / denominator[:, None]
    tl.store(
        out_ptr + token * stride_on + heads[:, None] * stride_oh + dims[None, :] * stride_od,
        out.to(out_ptr.dtype.element_ty), mask=head_ok[:, None] & dim_ok[None, :],
    )


def launch_cache_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, scale: float,
    block_l: int = 64, num_warps: int = 4, num_stages: int = 2,
) -> torch.Tensor:
    """q [N, H, D]; k_cache/v_cache [rows, L, KV, D]; slots [N] (row * L + position) -> [N, H, D]."""
    n_tokens, n_heads, head_dim = q.shape
    n_kv = k_cache.shape[2]
    if n_heads // n_kv > MAX_GROUP:
        raise ValueError(f"cache attention supports up to {MAX_GROUP} query heads per KV head, not {n_heads // n_kv}")
    out = q.new_empty(q.shape)
    if n_tokens == 0:
        return out
    _cache_attention_kernel[(n_tokens, n_kv)](
        q, k_cache, v_cache, slots, out,
        *q.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        slots.stride(0), *out.stride(),
        k_cache.shape[1], scale,
        REP=n_heads // n_kv, GROUP_P=MAX_GROUP, HEAD_DIM=head_dim, HEAD_DIM_P=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_L=block_l, num_warps=num_warps, num_stages=num_stages,
    )
    return out
