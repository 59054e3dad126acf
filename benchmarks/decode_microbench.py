"""Decode-step building blocks at the qwen3-0.6b shape, each timed in a CUDA graph of 28 layers.

    python benchmarks/decode_microbench.py

Batch 40, cache length 128, 8 KV heads x 2 query heads each, head_dim 128, bf16; every layer has a
cache (or weights) of its own, so nothing is served from L2 that a real step would read from HBM.
Rows at positions drawn from 20..127. Prints one line per variant: the decode attention ops that
PyTorch offers for one query per row over a static cache (SDPA with a mask under each backend, our
cache attention's PyTorch path, which gathers each query's row first, the flash and
memory-efficient varlen kernels with per-row key lengths, Inductor-compiled math, flex attention)
and our Triton kernel over a sweep of its tile configs, with max error against an fp32
reference; then 7 GEMMs per block against q/k/v and gate/up stacked into one GEMM each; then the
sampler: PyTorch's ops, eager and compiled, against our Triton kernels; first, a long prompt's
prefill attention (8 x 1024 tokens) through our kernel against causal SDPA. Numbers of H200 runs:
benchmarks/results/2026-11-28-h200 and -h200-kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from titan_conformance.generator.sampling import sampling_tensors, torch_sample_tokens
from titan_conformance.profile import SamplingSpec
from titan_conformance.generator.sampling_kernel import launch_sample
from titan_conformance.model.cache_attention import sdpa_cache_attention
from titan_conformance.model.cache_attention_kernel import launch_cache_attention

B, L, KV, REP, D, LAYERS = 40, 128, 8, 2, 128, 28
H = KV * REP
DTYPE, DEVICE = torch.bfloat16, "cuda"


def graph_us(fn, reps: int = 200) -> float:
    """Microseconds per call of `fn` replayed as one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(10):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1000


def attention_table(label: str, variants: dict, caches: list, error, reps: int = 200) -> None:
    """One line per variant `fn(k, v)`: microseconds a layer over every layer's cache in one CUDA
    graph, and `error(fn)` on the first layer against the reference. A variant this torch build
    lacks prints why; the rest still run."""
    for name, fn in variants.items():
        try:
            err = error(fn)
            per_layer = graph_us(lambda: [fn(k, v) for k, v in caches], reps) / LAYERS
            print(f"{label} | {name:32s} | {per_layer:8.2f} us/layer | max err {err:.2e}", flush=True)
        except Exception as e:  # an op this torch build lacks: say so, time the rest
            print(f"{label} | {name:32s} | failed: {type(e).__name__}: {str(e)[:200]}", flush=True)


def hidden_slots(pos):
    """[B, 1, 1, L]: cache slots past each row's position."""
    return (torch.arange(L, device=pos.device) > pos.view(B, 1)).view(B, 1, 1, L)


def reference(q, k, v, pos):
    scores = q.float().reshape(B, KV, REP, D) @ k.float().permute(0, 2, 3, 1) / D**0.5
    scores = scores.masked_fill(hidden_slots(pos), float("-inf"))
    return (scores.softmax(-1) @ v.float().permute(0, 2, 1, 3)).reshape(B, 1, H, D)


def sdpa_mask(q, k, v, pos):
    """One SDPA over the query heads grouped by KV head, with a mask, straight over the cache."""
    grouped = q.reshape(B, KV, REP, D)
    out = F.scaled_dot_product_attention(grouped, k.transpose(1, 2), v.transpose(1, 2), attn_mask=~hidden_slots(pos))
    return out.reshape(B, 1, H, D)


def sdpa_gathered(q, k, v, slots):
    """The generator's cache attention without Triton: each query's row gathered, then as above."""
    return sdpa_cache_attention(q.view(B, H, D), k, v, slots, D**-0.5).view(B, 1, H, D)


def with_backend(fn, backend):
    def run(*args):
        with sdpa_kernel(backend):
            return fn(*args)

    return run


ROWS = torch.arange(B + 1, device=DEVICE, dtype=torch.int32)


def flash_varlen(q, k, v, pos):
    out = torch.ops.aten._flash_attention_forward(
        q.view(B, H, D), k.view(B * L, KV, D), v.view(B * L, KV, D), ROWS, ROWS * L, 1, L, 0.0, False, False,
        seqused_k=(pos + 1).to(torch.int32),
    )[0]
    return out.view(B, 1, H, D)


def efficient_varlen(q, k, v, pos):
    grouped = q.view(B, KV, REP, D).transpose(1, 2).reshape(1, B * REP, KV, D)
    out = torch.ops.aten._efficient_attention_forward(
        grouped, k.view(1, B * L, KV, D), v.view(1, B * L, KV, D), None, ROWS * REP, ROWS * L, REP, L, 0.0, 0,
        False, seqlen_k=(pos + 1).to(torch.int32),
    )[0]
    return out.view(B, REP, KV, D).transpose(1, 2).reshape(B, 1, H, D)


def math_grouped(q, k, v, pos):
    scores = torch.einsum("bgrd,blgd->bgrl", q.reshape(B, KV, REP, D).float(), k.float()) / D**0.5
    scores = scores.masked_fill(hidden_slots(pos), float("-inf"))
    return torch.einsum("bgrl,blgd->bgrd", scores.softmax(-1), v.float()).to(DTYPE).reshape(B, 1, H, D)


def flex(q, k, v, pos):
    mask = create_block_mask(lambda b, h, qi, ki: ki <= pos[b], B, None, 1, L, device=DEVICE)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return flex_attention(q, k, v, block_mask=mask, enable_gqa=True).transpose(1, 2)


def flex_batch_free(q, k, v, pos):
    """Flex with every KV block marked partial: the mask is evaluated in the kernel for each row, so
    the BlockMask does not depend on the batch size (create_block_mask's does: a recompile per size)."""
    blocks = (L + 127) // 128
    mask = BlockMask.from_kv_blocks(
        torch.full((1, 1, 1), blocks, dtype=torch.int32, device=DEVICE),
        torch.arange(blocks, dtype=torch.int32, device=DEVICE).view(1, 1, 1, blocks),
        mask_mod=lambda b, h, qi, ki: ki <= pos[b], seq_lengths=(1, L),
    )
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return flex_attention(q, k, v, block_mask=mask, enable_gqa=True).transpose(1, 2)


def triton_decode(slots, block_l, num_warps, num_stages):
    def run(q, k, v, pos):
        return launch_cache_attention(q.view(B, H, D), k, v, slots, D**-0.5, block_l, num_warps, num_stages).view(B, 1, H, D)

    return run


def attention_rows() -> None:
    torch.manual_seed(0)
    caches = [
        tuple(torch.randn(B, L, KV, D, device=DEVICE, dtype=DTYPE) for _ in range(2)) for _ in range(LAYERS)
    ]
    q = torch.randn(B, 1, H, D, device=DEVICE, dtype=DTYPE)
    pos = torch.randint(20, L, (B,), device=DEVICE)
    slots = ROWS[:B] * L + pos  # the cache attention's input: row * L + position, made once, not timed
    variants = {
        "SDPA + mask (default backend)": sdpa_mask,
        "SDPA + mask, efficient backend": with_backend(sdpa_mask, SDPBackend.EFFICIENT_ATTENTION),
        "SDPA + mask, cuDNN backend": with_backend(sdpa_mask, SDPBackend.CUDNN_ATTENTION),
        "gathered rows, SDPA + mask": lambda q, k, v, pos: sdpa_gathered(q, k, v, slots),
        "flash varlen, seqused_k": flash_varlen,
        "efficient varlen, seqlen_k": efficient_varlen,
        "compiled math, grouped": torch.compile(math_grouped, fullgraph=True),
        "compiled SDPA + mask": torch.compile(sdpa_mask, fullgraph=True),
        "compiled flex attention": torch.compile(flex, fullgraph=True),
        "compiled flex, batch-free mask": torch.compile(flex_batch_free, fullgraph=True),
    }
    for block_l in (32, 64, 128):
        for warps in (4, 8):
            for stages in (1, 2, 3):
                variants[f"triton L{block_l} w{warps} s{stages}"] = triton_decode(slots, block_l, warps, stages)
    expected = reference(q, *caches[0], pos)
    attention_table(
        "attention", {name: (lambda k, v, fn=fn: fn(q, k, v, pos)) for name, fn in variants.items()}, caches,
        lambda fn: (fn(*caches[0]).float() - expected).abs().max().item(),
    )


def gemm_rows() -> None:
    torch.manual_seed(0)

    def weight(rows, cols):
        return torch.randn(rows, cols, device=DEVICE, dtype=DTYPE) * 0.02

    layers = []
    for _ in range(LAYERS):
        w = dict(q=weight(2048, 1024), k=weight(1024, 1024), v=weight(1024, 1024), o=weight(1024, 2048),
                 g=weight(3072, 1024), u=weight(3072, 1024), d=weight(1024, 3072))
        w["qkv"], w["gu"] = torch.cat([w["q"], w["k"], w["v"]]), torch.cat([w["g"], w["u"]])
        layers.append(w)
    x, a, m = (torch.randn(B, n, device=DEVICE, dtype=DTYPE) for n in (1024, 2048, 3072))

    separate = ((x, "q"), (x, "k"), (x, "v"), (a, "o"), (x, "g"), (x, "u"), (m, "d"))
    stacked = ((x, "qkv"), (a, "o"), (x, "gu"), (m, "d"))
    for name, gemms in (("7 GEMMs per block", separate), ("4 per block, q/k/v and gate/up stacked", stacked)):
        per_block = graph_us(lambda: [[F.linear(i, w[n]) for i, n in gemms] for w in layers]) / LAYERS
        print(f"gemm | {name:44s} | {per_block:6.2f} us/block", flush=True)


def sampler_rows() -> None:
    """Gumbel argmax and the token's logprob over the vocabulary at batch B: PyTorch's ops eager
    (kernels over [B, V] fp32) and fused by Inductor, against our two Triton kernels."""
    torch.manual_seed(0)
    vocab = 151936
    logits = torch.randn(B, vocab, device=DEVICE, dtype=DTYPE)
    noise = torch.rand(B, vocab, device=DEVICE).log().neg().log().neg()
    divisor, scale = sampling_tensors(SamplingSpec(), DEVICE)[:2]
    expected = torch_sample_tokens(logits, noise, divisor, scale)
    variants = {
        "PyTorch ops": torch_sample_tokens,
        "PyTorch ops, compiled": torch.compile(torch_sample_tokens, fullgraph=True),
        "Triton kernels": launch_sample,
    }
    for name, fn in variants.items():
        out = fn(logits, noise, divisor, scale)
        same = bool((out[0] == expected[0]).all())
        err = (out[1] - expected[1]).abs().max().item()
        us = graph_us(lambda: fn(logits, noise, divisor, scale))
        print(f"sampler | {name:22s} | {us:7.1f} us | same tokens {same} | logprob err {err:.1e}", flush=True)


def prefill_rows(batch: int = 8, prompt: int = 1024) -> None:
    """A long prompt's attention, as the generator's prefill runs it: our kernel with tiles of tokens
    (its default) and a token per program (each token reads its row's keys and values again),
    against causal SDPA over dense [B, H, S, D] (the trainer's op; flash on CUDA)."""
    torch.manual_seed(0)
    n = batch * prompt
    caches = [tuple(torch.randn(batch, prompt, KV, D, device=DEVICE, dtype=DTYPE) for _ in range(2)) for _ in range(LAYERS)]
    q = torch.randn(n, H, D, device=DEVICE, dtype=DTYPE)
    slots = torch.arange(n, device=DEVICE)  # row b's tokens at positions 0..prompt-1: slot b * prompt + p
    dense_q = q.view(batch, prompt, H, D).transpose(1, 2)

    def causal_sdpa(k, v):
        keys, values = (t.transpose(1, 2) for t in (k, v))
        return F.scaled_dot_product_attention(dense_q, keys, values, is_causal=True, enable_gqa=True)

    variants = {
        "triton, tiles of tokens": lambda k, v: launch_cache_attention(q, k, v, slots, D**-0.5),
        "triton, a token per program": lambda k, v: launch_cache_attention(q, k, v, slots, D**-0.5, tokens_per_program=1),
        "causal SDPA, dense (trainer)": causal_sdpa,
    }
    expected = causal_sdpa(*caches[0]).float().transpose(1, 2).reshape(n, H, D)

    def error(fn):
        out = fn(*caches[0]).float()
        return ((out.transpose(1, 2).reshape(n, H, D) if out.dim() == 4 else out) - expected).abs().max().item()

    attention_table(f"prefill {batch}x{prompt}", variants, caches, error, reps=20)


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    prefill_rows()
    attention_rows()
    gemm_rows()
    sampler_rows()
