"""The native generator over our reference Qwen3: a static KV cache, regionally compiled blocks."""

from __future__ import annotations

from functools import partial

import torch

from titan_conformance.compilation import CompileLedger, apply_regional_compile
from titan_conformance.compilation.warm_start import start_warm_start
from titan_conformance.generator.base import GeneratorConfig
from titan_conformance.generator.native import NativeGenerator
from titan_conformance.generator.sampling import warm_up_sampler
from titan_conformance.model.args import ModelArgs
from titan_conformance.model.attention import KVCacheAttention
from titan_conformance.model.qwen3 import Qwen3Model
from titan_conformance.profile import CompileConfig


def qwen3_generator(
    args: ModelArgs, *, config: GeneratorConfig, compile_config: CompileConfig, ledger: CompileLedger,
    dtype: torch.dtype, tp_mesh=None, unwrap_async: bool = False, stacked: bool = True,
) -> NativeGenerator:
    """Our Qwen3 with a static KV cache, regionally compiled under the role `generator`.
    `tp_mesh`: shard the model over this 1-D DeviceMesh (each rank caches its own KV heads);
    `unwrap_async`: resolve AsyncCollectiveTensor block inputs before each compiled block;
    `stacked`: q/k/v and gate/up as one GEMM each (`Qwen3Model.fuse_projections`; never under TP)."""
    device = config.device
    with torch.device(device):
        model = Qwen3Model(args).to(dtype)
    model.requires_grad_(False).eval()
    if stacked and tp_mesh is None:
        model.fuse_projections()
    tp = tp_mesh.size() if tp_mesh is not None else 1
    kv_heads = args.n_kv_heads // tp  # each rank caches (and attends over) its own heads
    model.set_inner_attention(
        lambda _: KVCacheAttention(config.cache_rows, config.max_model_len, kv_heads, args.head_dim, dtype, device)
    )
    if tp_mesh is not None:
        from titan_conformance.parallel import apply_tp

        apply_tp(model, tp_mesh)
    if unwrap_async:
        from titan_conformance.parallel import unwrap_async_inputs

        unwrap_async_inputs(model)
    gen = NativeGenerator(model, vocab_size=args.vocab_size, config=config)
    gen.region = apply_regional_compile(model, compile_config, ledger, role="generator")
    if compile_config.warm_start:  # last: nothing here may fail once the thread runs
        gen.warm_start = start_warm_start(
            device, compile_config.backend if compile_config.enable else None,
            [partial(model.layers[0].self_attn.inner_attention.warm_up, args.n_heads // tp),
             partial(warm_up_sampler, args.vocab_size, dtype, device, config.sampling)],
        )
    return gen
