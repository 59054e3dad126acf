"""Our Qwen3 as an out-of-tree vLLM model: vLLM's `Attention` layer supplies attention and the
paged KV cache; embedding, blocks, norms, lm_head and regional compile are our code.

Registered by `register()` (the `vllm.general_plugins` entry point, so spawned engine workers find
it too) under ARCHITECTURE; the backend points vLLM at it with `hf_overrides`. The shared
CompileConfig travels in the HF config (key `titan_compile`), so it reaches any worker process.
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.model_loader.weight_utils import default_weight_loader

from titan_conformance.compilation import CompileConfig, CompileLedger, apply_regional_compile
from titan_conformance.model.args import ModelArgs
from titan_conformance.model.qwen3 import Qwen3Model
from titan_conformance.profile import SamplingSpec
from titan_conformance.trainer.logprobs import scoring_logits

ARCHITECTURE = "TitanConformanceQwen3ForCausalLM"
# In-process engines hand their model's compile events to the backend's ledger (by key).
LEDGERS: dict[str, CompileLedger] = {}


def register() -> None:
    """Registers the class itself: registered by name, vLLM inspects it in a subprocess that
    imports torch and vLLM again (21 s of a cold engine start on an H100); importing this module
    initializes no CUDA, which is what registering by name guards against."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(ARCHITECTURE, TitanQwen3ForCausalLM)


_LAYERS: "weakref.WeakValueDictionary[int, Attention]" = weakref.WeakValueDictionary()
"""vLLM Attention layers by number, for `vllm_attention` (weak: an engine's layers go with it)."""
_LAYER_NUMBERS = itertools.count()


@torch.library.custom_op("titan_conformance::vllm_attention", mutates_args=())
def vllm_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
    """vLLM's Attention layer number `layer` (a CPU scalar) on flat q/k/v, opaque to Dynamo. Traced,
    vLLM's `Attention.forward` reads its `layer_name` string, which Dynamo guards on: one block
    graph shared by every layer recompiled per layer, past the recompile limit (H100, vLLM 0.26)."""
    return _LAYERS[int(layer)](query, key, value)


@vllm_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(query)


class VllmInnerAttention(nn.Module):
    """Our inner-attention interface over vLLM's Attention. vLLM runs the model on a flat token
    stream (every sequence of the step, prefill and decode mixed), which the wrapper presents to our
    blocks as B=1, S=num_tokens; vLLM's attention metadata restores the per-sequence structure."""

    def __init__(self, args: ModelArgs, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.attn = Attention(
            num_heads=args.n_heads,
            head_size=args.head_dim,
            scale=args.head_dim**-0.5,
            num_kv_heads=args.n_kv_heads,
            cache_config=vllm_config.cache_config,
            quant_config=vllm_config.quant_config,
            prefix=f"{prefix}.attn",
        )
        number = next(_LAYER_NUMBERS)
        _LAYERS[number] = self.attn
        # A buffer, so that the compiled block takes it as an input like its weights (never a guard
        # on its value); on the CPU, so that reading it inside a graph capture needs no sync.
        self.register_buffer("layer", torch.tensor(number, device="cpu"), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        _, seq, heads, dim = q.shape
        out = vllm_attention(q.reshape(seq, heads * dim), k.reshape(seq, -1), v.reshape(seq, -1), self.layer)
        return out.view(1, seq, heads, dim)


class TitanQwen3ForCausalLM(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        cfg = vllm_config.model_config.hf_config.to_dict()
        cfg["architectures"] = ["Qwen3ForCausalLM"]
        # transformers 5 keeps rope_theta under rope_parameters
        if "rope_theta" not in cfg and isinstance(cfg.get("rope_parameters"), dict):
            cfg["rope_theta"] = cfg["rope_parameters"].get("rope_theta", 1_000_000.0)
        cfg.pop("rope_scaling", None)
        self.args = ModelArgs.from_hf_config(cfg, source="vLLM hf_config")
        self.model = Qwen3Model(self.args)
        for i, block in enumerate(self.model.layers):
            block.self_attn.inner_attention = VllmInnerAttention(
                self.args, vllm_config, prefix=f"model.layers.{i}.self_attn.inner_attention"
            )
        compile_config = CompileConfig(**cfg.get("titan_compile", {"enable": False}))
        ledger = LEDGERS.get(cfg.get("titan_ledger", ""), CompileLedger())
        self.region = apply_regional_compile(self.model, compile_config, ledger, role="vllm")
        self.logits_spec: SamplingSpec | None = None
        """While set (`vllm_hooks.set_logits_spec`): logits come out as that spec scores them
        (`trainer.logprobs.scoring_logits`); vLLM's prompt and raw logprobs are otherwise untempered."""
        self.startup_marks: dict[str, float] = {}
        """perf_counter() at vLLM's first forward ("first_forward": its profile run, where our blocks
        compile), at the warm-up forward it runs before its first graph capture ("capture") and at the
        end of the last captured forward ("captured")."""
        self._last_forward = 0.0

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors=None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Flat [N] tokens (or their embeddings) at [N] positions -> final-norm hidden states [N, dim]."""
        now = time.perf_counter()
        capturing = positions.is_cuda and torch.cuda.is_current_stream_capturing()
        self.startup_marks.setdefault("first_forward", now)
        if capturing:
            self.startup_marks.setdefault("capture", self._last_forward)
        self._last_forward = now
        embeddings = None if inputs_embeds is None else inputs_embeds.unsqueeze(0)
        tokens = positions.unsqueeze(0) if input_ids is None else input_ids.unsqueeze(0)  # shape only
        hidden = self.model.hidden_states(tokens, positions.unsqueeze(0), embeddings).squeeze(0)
        if capturing:
            self.startup_marks["captured"] = time.perf_counter()
        return hidden

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """fp32 logits, as the trainer tempers them: vLLM's V2 sampler divides by the temperature in
        place, in the logits' dtype, so bf16 logits would be rounded to bf16 once more after tempering
        (on an H100, vLLM 0.26: trainer vs generator 1.02x the bf16 floor's mean where the native
        generator measures 0.43-0.54x, and decode vs prefill past its tolerance)."""
        logits = self.model.logits(hidden_states).float()
        return logits if self.logits_spec is None else scoring_logits(logits, self.logits_spec)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """HF tensor names (`model.<ours>`, `lm_head.weight`), at load and at reload_weights. The
        lookup is per call and goes through each parameter's weight_loader: during a reload vLLM
        swaps in placeholder parameters whose loader it wraps."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.startswith("lm_head."):
                if self.model.lm_head is None:
                    continue  # tied to the embedding
                name = f"model.{name}"
            param = params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(name)
        return loaded
