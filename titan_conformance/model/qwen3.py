"""Qwen3 dense decoder with ONE TransformerBlock class shared by trainer and generator.

Module names follow the HF checkpoint layout (minus the leading `model.`), so a Qwen3 checkpoint's
tensors map one to one. The block's inner attention is pluggable (see `attention.py`); nothing else
differs between the trainer's and the generator's copy of the model.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from titan_conformance.model.args import ModelArgs
from titan_conformance.model.attention import CausalAttention


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in (at least) fp32 and cast back before the weight, as Qwen3's reference does.
        h = x.to(torch.promote_types(x.dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [B, S, head_dim] for the given positions (computed in at least fp32)."""
    compute = torch.promote_types(dtype, torch.float32)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=compute) / head_dim))
    freqs = positions.to(compute).unsqueeze(-1) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def fuse_linears(owner: nn.Module, names: list[str], stack: str) -> list[int]:
    """Stacks the weights of `owner`'s linears `names` (which all read the same input) into one
    buffer `stack`, and makes each linear's weight a view of its rows: one GEMM instead of several,
    while the named parameters (checkpoint layout, weight sync) still read and write the same
    values. For frozen, unsharded inference copies only. Returns the rows of each part."""
    linears = [getattr(owner, n) for n in names]
    for name, lin in zip(names, linears):
        if lin.weight.requires_grad or type(lin.weight.data) is not torch.Tensor:
            raise ValueError(
                f"Stacking {name} needs a frozen, unsharded weight (got {type(lin.weight.data).__name__}, "
                f"requires_grad={lin.weight.requires_grad}): a trainer's would stop receiving gradients."
            )
    fused = torch.cat([lin.weight.detach() for lin in linears])
    sizes = [lin.out_features for lin in linears]
    for lin, rows in zip(linears, fused.split(sizes)):
        lin.weight = nn.Parameter(rows, requires_grad=False)
    owner.register_buffer(stack, fused, persistent=False)
    owner.stacked_parts = {**getattr(owner, "stacked_parts", {}), stack: names}
    return sizes


def detached_from_stack(model: nn.Module) -> str | None:
    """The first projection weight that is no longer a view of its stack, else None. `Module.to()`
    with a new dtype or device, deepcopy and `load_state_dict(assign=True)` replace parameters: a
    weight sync would then write where the blocks' GEMMs never read."""
    for prefix, module in model.named_modules():
        for stack, names in getattr(module, "stacked_parts", {}).items():
            storage = getattr(module, stack).untyped_storage().data_ptr()
            for name in names:
                if getattr(module, name).weight.untyped_storage().data_ptr() != storage:
                    return f"{prefix}.{name}.weight"
    return None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, S, H, D]; cos/sin: [B, S, D]."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.q_norm = RMSNorm(args.head_dim, args.norm_eps)
        self.k_norm = RMSNorm(args.head_dim, args.norm_eps)
        self.inner_attention: nn.Module = CausalAttention()
        # [q; k; v] weights stacked, once `fuse_projections` ran (the generator's copy).
        self.register_buffer("qkv_weight", None, persistent=False)
        self.qkv_rows: list[int] = []

    def fuse_projections(self) -> None:
        self.qkv_rows = fuse_linears(self, ["q_proj", "k_proj", "v_proj"], "qkv_weight")

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        if self.qkv_weight is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = F.linear(x, self.qkv_weight).split(self.qkv_rows, -1)
        q = self.q_norm(q.view(bsz, seqlen, -1, self.head_dim))
        k = self.k_norm(k.view(bsz, seqlen, -1, self.head_dim))
        v = v.view(bsz, seqlen, -1, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = self.inner_attention(q, k, v, index)
        return self.o_proj(out.reshape(bsz, seqlen, -1))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.up_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.down_proj = nn.Linear(args.hidden_dim, args.dim, bias=False)
        # [gate; up] weights stacked, once `fuse_projections` ran (the generator's copy).
        self.register_buffer("gate_up_weight", None, persistent=False)

    def fuse_projections(self) -> None:
        fuse_linears(self, ["gate_proj", "up_proj"], "gate_up_weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_weight is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = F.linear(x, self.gate_up_weight).chunk(2, -1)
        return self.down_proj(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    """The one block class: the unit of regional compilation."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = FeedForward(args)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """x [B, S, dim]; cos/sin [B, S, head_dim]; `index` [B, S], per token, what the inner
        attention reads: the position (trainer) or the KV-cache slot (generator)."""
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, index)
        return h + self.mlp(self.post_attention_layernorm(h))


class Qwen3Model(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = None if args.tie_word_embeddings else nn.Linear(args.dim, args.vocab_size, bias=False)

    def set_inner_attention(self, factory: Callable[[int], nn.Module]) -> None:
        """Swaps every block's inner attention op (factory receives the layer index)."""
        for i, block in enumerate(self.layers):
            block.self_attn.inner_attention = factory(i)

    def fuse_projections(self) -> None:
        """One GEMM for q/k/v and one for gate/up in every block, as vLLM's QKVParallelLinear and
        MergedColumnParallelLinear do: at decode batch sizes each GEMM is latency-bound, so fewer,
        wider ones are faster (H100/H200 decode step). Parameter names and in-place weight sync are
        unchanged; not for a tensor-parallel model (its shards are not stacked this way)."""
        for block in self.layers:
            block.self_attn.fuse_projections()
            block.mlp.fuse_projections()

    def hidden_states(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
        cache_slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, S, dim]; positions default to 0..S-1 per row. `embeddings`
        [B, S, dim], when given, replace the token embedding lookup. `cache_slots` [B, S], when
        given, is what the blocks' inner attention gets instead of the positions (a KV cache's)."""
        if positions is None:  # contiguous, like the generator's: a stride-0 view would be a guard
            positions = torch.arange(tokens.shape[1], device=tokens.device).repeat(tokens.shape[0], 1)
        h = self.embed_tokens(tokens) if embeddings is None else embeddings
        cos, sin = rope_cos_sin(positions, self.args.head_dim, self.args.rope_theta, h.dtype)
        index = positions if cache_slots is None else cache_slots
        for block in self.layers:
            h = block(h, cos, sin, index)
        return self.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # Through the module when there is one, so a tensor-parallel plan's hooks on lm_head run.
        if self.lm_head is not None:
            return self.lm_head(hidden)
        return F.linear(hidden, self.embed_tokens.weight)

    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor | None = None, cache_slots: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.logits(self.hidden_states(tokens, positions, cache_slots=cache_slots))

    def init_weights(self, seed: int, std: float = 0.02) -> None:
        """Deterministic random init (normal weights, unit norms) for shape-only profiles, drawn on the
        parameters' device (on a CPU the 0.6B shape takes 8 s): a seed gives the same weights on the
        same kind of device, not across kinds."""
        device = next(self.parameters()).device
        gen = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen, device=device) * std)
