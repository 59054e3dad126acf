"""An independent, deliberately plain Qwen3 forward in float64, straight from HF tensor names.

No code is shared with titan_conformance.model: attention is an explicit softmax over a causal
mask, GQA maps query head h to key head h // group, RoPE rotates halves.
"""

from __future__ import annotations

import math

import torch


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x: [S, H, D] at positions 0..S-1."""
    seq, _, dim = x.shape
    half = dim // 2
    freq = torch.tensor([theta ** (-2.0 * i / dim) for i in range(half)], dtype=torch.float64)
    angle = torch.arange(seq, dtype=torch.float64)[:, None] * freq[None, :]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def reference_logits(tensors: dict[str, torch.Tensor], cfg: dict, tokens: list[int]) -> torch.Tensor:
    t = {k: v.to(torch.float64) for k, v in tensors.items()}
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    n_h, n_kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    x = t["model.embed_tokens.weight"][torch.tensor(tokens)]
    seq = len(tokens)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, t[p + "input_layernorm.weight"], eps)
        q = (h @ t[p + "self_attn.q_proj.weight"].T).view(seq, n_h, hd)
        k = (h @ t[p + "self_attn.k_proj.weight"].T).view(seq, n_kv, hd)
        v = (h @ t[p + "self_attn.v_proj.weight"].T).view(seq, n_kv, hd)
        q = _rope(_rms(q, t[p + "self_attn.q_norm.weight"], eps), theta)
        k = _rope(_rms(k, t[p + "self_attn.k_norm.weight"], eps), theta)
        out = torch.empty(seq, n_h, hd, dtype=torch.float64)
        for head in range(n_h):
            kv = head // (n_h // n_kv)
            scores = q[:, head] @ k[:, kv].T / math.sqrt(hd)
            scores = scores.masked_fill(torch.ones(seq, seq).triu(1).bool(), float("-inf"))
            out[:, head] = torch.softmax(scores, -1) @ v[:, kv]
        x = x + out.reshape(seq, n_h * hd) @ t[p + "self_attn.o_proj.weight"].T
        h = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
        gate = h @ t[p + "mlp.gate_proj.weight"].T
        x = x + ((gate * torch.sigmoid(gate)) * (h @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
    x = _rms(x, t["model.norm.weight"], eps)
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    return x @ head.T
