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


def attach_tp_plan(api: TorchtitanAPI, spec, tp: int) -> None:
    """Fills the sharding configs of torchtitan's Qwen3 TP plan into the spec's model config (its
    `update_from_config`, as torchtitan's trainer and vLLM wrapper call it before building), so that
    models built from the spec carry the plan and `parallelize` applies it. No sequence parallel:
    the toy batches are tiny and both roles keep activations replicated between blocks."""
    from types import SimpleNamespace

    if tp > 1 and isinstance(spec.model.layers[0].attention.qkv_linear, api.FusedQKVLinear.Config):
        raise ConformanceError(
            "torchtitan's TP plan shards a fused wqkv projection by rows, which only its spmd_types "
            "backend splits per head; this provider runs TP on the DTensor backend. Use a flavor with "
            "separate q/k/v projections (torchtitan.flavor = \"debugmodel_non_fused_qkv\") at parallel.tp > 1."
        )
    spec.model.update_from_config(config=SimpleNamespace(parallelism=_tp_only(api, tp)))


TP_BACKEND = "partial_dtensor"
"""torchtitan's DTensor backend for model-parallel axes: parameters are DTensors and the logits a
vocab-sharded DTensor that torchtitan's `compute_logprobs` gathers itself. Its default,
spmd_types, keeps local tensors that every forward must run under torchtitan's mesh context."""


def tp_dims(api: TorchtitanAPI, tp: int, device: torch.device):
    """torchtitan's ParallelDims over the current process group (TP only), its mesh built on the
    system's device type: torchtitan takes the device type from the machine's accelerator and
    assumes CUDA without one, so a gloo (CPU) run sets it for the mesh build and restores it."""
    import torch.distributed as dist
    import torchtitan.distributed.parallel_dims as parallel_dims_module

    dims = api.ParallelDims.from_config(_tp_only(api, tp), dist.get_world_size())
    machine_default = parallel_dims_module.device_type
    parallel_dims_module.device_type = device.type
    try:
        dims.build_mesh()
    finally:
        parallel_dims_module.device_type = machine_default
    return dims


def _tp_only(api: TorchtitanAPI, tp: int):
    return api.ParallelismConfig(tensor_parallel_degree=tp, enable_sequence_parallel=False, spmd_backend=TP_BACKEND)


def parallelize(api: TorchtitanAPI, spec, model: nn.Module, dims) -> None:
    """torchtitan's parallelize function for the flavor's model family (Qwen3's `parallelize_qwen3`),
    TP only: torchtitan's compile is applied separately (`compile_blocks`, counted per role), no
    activation checkpointing, no data parallel (`skip_dp`, as torchtitan's generator calls it).
    torchtitan parallelizes on meta and initializes after; the trainer here is parallelized after
    its warm-up, so a tied embedding is re-tied the way torchtitan's init does it."""
    spec.parallelize_fn(
        model, parallel_dims=dims, training=api.TrainingConfig(), parallelism=_tp_only(api, dims.tp),
        compile_config=api.CompileConfig(enable=False), ac_config=None, dump_folder="", skip_dp=True,
    )
    if model.enable_weight_tying:  # each module got its own DTensor; torchtitan's init_states re-ties them
        model.tok_embeddings.weight = model.lm_head.weight


def build_generator_model(api: TorchtitanAPI, spec, device: torch.device, dtype: torch.dtype, rows: int, max_len: int, dims=None) -> nn.Module:
    """The generator's model: built on meta at `dtype`, our KV cache as every block's inner
    attention (`kv_cache.CacheAttention`, which takes over the SDPA's sharding config), sharded by
    torchtitan's plan when `dims` is given, then materialized with its buffers (RoPE) initialized.
    Its weights are whatever weight sync sends; the cache holds this rank's kv heads."""
    from titan_conformance.providers.torchtitan.kv_cache import CacheAttention

    with torch.device("meta"):
        model = spec.model.build()
    for param in model.parameters():
        param.data = param.data.to(dtype)
    for block in model.layers.values():
        block.attention.inner_attention = CacheAttention(block.attention.inner_attention._sharding_config)
    if dims is not None:
        parallelize(api, spec, model, dims)
    model.to_empty(device=device)
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.init_weights(buffer_device=device)
    tp = dims.tp if dims is not None else 1
    for block in model.layers.values():
        attn = block.attention
        attn.inner_attention.attach(KVCacheAttention(rows, max_len, attn.n_kv_heads // tp, attn.head_dim, dtype, device))
    return model.requires_grad_(False).eval()


def compile_blocks(api: TorchtitanAPI, model: nn.Module, config: CompileConfig, ledger: CompileLedger, role: str,
                   dims=None) -> str | None:
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
    dims = dims or api.ParallelDims(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, world_size=1)
    api.apply_compile(model, compile_config=tt_config, parallel_dims=dims)
    return region
