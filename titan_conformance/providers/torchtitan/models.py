"""torchtitan's Qwen3, built the way torchtitan builds it, for the trainer and for the generator.

Both sides build the flavor's model from torchtitan's registry (meta device, `to_empty`,
`init_weights`) and compile it with torchtitan's own `apply_compile` (each block on its own, one
graph for all layers). The trainer's inner attention is torchtitan's causal SDPA module; the
generator's is our static KV cache behind torchtitan's inner-attention call convention, as
torchtitan's vLLM wrapper puts vLLM's paged attention there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from titan_conformance.compilation import CompileConfig, CompileLedger
from titan_conformance.compilation.regional import make_forward_private, private_region
from titan_conformance.errors import ConformanceError
from titan_conformance.model.attention import KVCacheAttention
from titan_conformance.model.checkpoint import read_checkpoint
from titan_conformance.providers.torchtitan.compat import TorchtitanAPI

# config.json key -> what the flavor's config holds there.
_HF_FIELDS = {
    "hidden_size": lambda c: c.dim,
    "num_hidden_layers": lambda c: len(c.layers),
    "num_attention_heads": lambda c: c.layers[0].attention.n_heads,
    "num_key_value_heads": lambda c: c.layers[0].attention.n_kv_heads,
    "head_dim": lambda c: c.layers[0].attention.head_dim,
    "vocab_size": lambda c: c.vocab_size,
    "rope_theta": lambda c: c.layers[0].attention.rope.theta,
    "tie_word_embeddings": lambda c: c.enable_weight_tying,
}


def flavor_spec(api: TorchtitanAPI, flavor: str, max_model_len: int):
    """The registry's ModelSpec for `flavor`, its RoPE table cut to max_model_len positions (as
    torchtitan's RL trainer sets it to its sequence length) and torchtitan's causal SDPA as inner
    attention: the flavors default to flex attention, which has no backward on CPU."""
    from torchtitan.models.qwen3 import qwen3_configs

    if flavor not in qwen3_configs:
        raise ConformanceError(
            f"torchtitan {api.version} has no Qwen3 flavor {flavor!r}; set torchtitan.flavor in the "
            f"profile to one of {', '.join(sorted(qwen3_configs))}."
        )
    spec = api.model_registry(flavor)
    sdpa = api.ScaledDotProductAttention.Config()
    layers = [
        dataclasses.replace(
            layer,
            attention=dataclasses.replace(
                layer.attention,
                inner_attention=sdpa,
                rope=dataclasses.replace(layer.attention.rope, max_seq_len=max_model_len),
            ),
        )
        for layer in spec.model.layers
    ]
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, layers=layers))


def build_model(spec, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """Meta build, `to_empty`, `init_weights` under `seed` (torchtitan's init draws from the global
    RNG), then parameters cast to `dtype` (buffers such as the RoPE table stay fp32)."""
    with torch.device("meta"):
        model = spec.model.build()
    model.to_empty(device=device)
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model.init_weights(buffer_device=device)
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model


def load_hf_checkpoint(model: nn.Module, spec, ckpt: Path, flavor: str) -> None:
    """An HF-layout checkpoint through torchtitan's Qwen3 state-dict adapter, as torchtitan loads
    one; its config.json must describe the flavor's shape."""
    config, hf_state = read_checkpoint(ckpt)
    for key, expected in _HF_FIELDS.items():
        if key in config and config[key] != expected(spec.model):
            raise ConformanceError(
                f"{ckpt}/config.json has {key} = {config[key]!r} but torchtitan's flavor {flavor!r} has "
                f"{expected(spec.model)!r}; set torchtitan.flavor in the profile to the checkpoint's flavor."
            )
    adapter = spec.state_dict_adapter(spec.model, None)
    state = adapter.from_hf(dict(hf_state))  # from_hf adds the tied lm_head to the dict it is given
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConformanceError(
            f"{ckpt}: torchtitan's state-dict adapter produced tensors the {flavor!r} model does not "
            f"take: {str(e).splitlines()[0]} (and more); the checkpoint is not a Qwen3 {flavor} checkpoint."
        ) from None


class CacheAttention(nn.Module):
    """Our KV cache behind torchtitan's inner-attention call `(q, k, v, *, attention_masks, scale,
    enable_gqa)`. The generator passes each token's cache slot as `attention_masks`, which
    torchtitan's blocks hand to the inner attention untouched (vLLM's wrapper reads its slot
    mapping from its forward context instead)."""

    def __init__(self, cache: KVCacheAttention) -> None:
        super().__init__()
        self.cache = cache

    def forward(self, q, k, v, *, attention_masks: torch.Tensor, scale: float | None = None, **_: Any):
        return self.cache(q, k, v, attention_masks, scale)


def use_kv_cache(model: nn.Module, rows: int, max_len: int, dtype: torch.dtype, device: torch.device) -> None:
    """Swaps every block's inner attention for a KV cache of `rows` sequences x `max_len` slots."""
    for block in model.layers.values():
        attn = block.attention
        cache = KVCacheAttention(rows, max_len, attn.n_kv_heads, attn.head_dim, dtype, device)
        attn.inner_attention = CacheAttention(cache)


def compile_blocks(api: TorchtitanAPI, model: nn.Module, config: CompileConfig, ledger: CompileLedger, role: str) -> str | None:
    """torchtitan's `apply_compile` over the model, each role with its own code object and budget
    (see compilation.regional) and a counting backend; returns the region (None: compile off)."""
    blocks = list(model.layers.values())
    if not config.enable:
        ledger.record_uncompiled(f"{role}.{type(blocks[0]).__name__}")
        return None
    # apply_compile always compiles with fullgraph=True, passes no mode or options and leaves
    # `dynamic` at torch.compile's default.
    settings = dataclasses.replace(config, fullgraph=True, dynamic=None, mode=None, options={}).settings()
    region, name = private_region(ledger, role, type(blocks[0]).__name__, settings)
    make_forward_private(blocks, name)
    ledger.use_recompile_limit(config.recompile_limit)
    tt_config = api.CompileConfig(enable=True, backend=ledger.backend(region, config.backend, None))
    parallel_dims = api.ParallelDims(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, world_size=1)
    api.apply_compile(model, compile_config=tt_config, parallel_dims=parallel_dims)
    return region
