"""The generator's CUDA decode attention: one Triton program per (sequence, KV head).

A decode step has one query per sequence. Each program loads its KV head's group of query heads
once (padded to MAX_GROUP = 16 rows, the tl.dot tile height), reads only cache slots 0..position of its own
row, BLOCK_L slots at a time through `tl.dot`, and keeps an online softmax in fp32: no mask tensor,
and no read of slots past the position.

Measured at the qwen3-0.6b decode shape (batch 40, 8 KV heads x 2 query heads, head_dim 128, cache
length 128, rows at positions spread over 20..127; 28 layers in one CUDA graph, H200): 8.0 us a
layer at BLOCK_L=64, 4 warps, 2 stages (7.5-11.8 across block sizes 32-128, 4-8 warps, 1-3 stages),
against 21.0 for Inductor-compiled SDPA with a mask and 13.6 for compiled flex attention
(`benchmarks/decode_microbench.py`).

Registered as the custom op `titan_conformance::decode_attention`, so Dynamo and Inductor treat it
as one opaque call inside the compiled block, and a FULL CUDA graph captures its launch. (As a
`torch.library.triton_op` Inductor would compile it into the block's code, and a restored compile
cache would bring it along; on torch 2.11 Inductor passes `scale` as fp64 and the online softmax's
loop-carried fp32 state then fails to compile: an fp32 cast of the scores is the fix to try.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


MAX_GROUP = 16
"""Query heads per KV head that one program holds (the padded tile height)."""


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, out_ptr,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kl, stride_kh, stride_kd,
    stride_vb, stride_vl, stride_vh, stride_vd,
    stride_pb, stride_ob, stride_oh, stride_od,
    scale,
    REP: tl.constexpr, GROUP_P: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, BLOCK_L: tl.constexpr,
):
    row, kv_head = tl.program_id(0).to(tl.int64), tl.program_id(1)  # int64: row offsets of a big cache pass 2**31
    last = tl.load(pos_ptr + row * stride_pb)  # this row's query position: slots 0..last are its own
    group = tl.arange(0, GROUP_P)  # the group's query heads, padded to the tl.dot tile height
    heads = kv_head * REP + group  # query head h = kv_head * rep + r
    dims = tl.arange(0, HEAD_DIM_P)
    head_ok = group < REP
    dim_ok = dims < HEAD_DIM
    q = tl.load(
        q_ptr + row * stride_qb + heads[:, None] * stride_qh + dims[None, :] * stride_qd,
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
            k_ptr + row * stride_kb + slots[:, None] * stride_kl + kv_head * stride_kh + dims[None, :] * stride_kd,
            mask=kv_mask, other=0.0,
        )
        v = tl.load(
            v_ptr + row * stride_vb + slots[:, None] * stride_vl + kv_head * stride_vh + dims[None, :] * stride_vd,
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
        out_ptr + row * stride_ob + heads[:, None] * stride_oh + dims[None, :] * stride_od,
        out.to(out_ptr.dtype.element_ty), mask=head_ok[:, None] & dim_ok[None, :],
    )


def launch_decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, scale: float,
    block_l: int = 64, num_warps: int = 4, num_stages: int = 2,
) -> torch.Tensor:
    """q [B, 1, H, D]; keys/values [rows >= B, L, KV, D] (the cache); positions [B, 1] -> [B, 1, H, D]."""
    bsz, _, n_heads, head_dim = q.shape
    n_kv = keys.shape[2]
    if n_heads // n_kv > MAX_GROUP:
        raise ValueError(f"decode attention supports up to {MAX_GROUP} query heads per KV head, not {n_heads // n_kv}")
    out = q.new_empty(q.shape)
    _decode_attention_kernel[(bsz, n_kv)](
        q, keys, values, positions, out,
        q.stride(0), q.stride(2), q.stride(3),
        *(keys.stride(i) for i in range(4)),
        *(values.stride(i) for i in range(4)),
        positions.stride(0), out.stride(0), out.stride(2), out.stride(3),
        scale,
        REP=n_heads // n_kv, GROUP_P=MAX_GROUP, HEAD_DIM=head_dim, HEAD_DIM_P=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_L=block_l, num_warps=num_warps, num_stages=num_stages,
    )
    return out


@torch.library.custom_op("titan_conformance::decode_attention", mutates_args=(), device_types="cuda")
def decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, scale: float
) -> torch.Tensor:
    return launch_decode_attention(q, keys, values, positions, scale)


@decode_attention.register_fake
def _(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, scale: float):
    return q.new_empty(q.shape)
