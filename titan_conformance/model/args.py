"""Model hyper-parameters, read from and written to HF `config.json` (Qwen3 layout)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from titan_conformance.errors import ConformanceError

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM",)


@dataclass(frozen=True)
class ModelArgs:
    """Qwen3 dense decoder shape, in torchtitan style."""

    dim: int = 128
    """Hidden size (HF `hidden_size`)."""
    n_layers: int = 4
    """Number of TransformerBlocks (HF `num_hidden_layers`)."""
    n_heads: int = 4
    """Query heads (HF `num_attention_heads`)."""
    n_kv_heads: int = 2
    """Key/value heads for grouped-query attention (HF `num_key_value_heads`)."""
    head_dim: int = 32
    """Per-head size; Qwen3 sets it independently of dim / n_heads."""
    hidden_dim: int = 384
    """SwiGLU inner size (HF `intermediate_size`)."""
    vocab_size: int = 64
    """Vocabulary size of the embedding and the output projection."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon (HF `rms_norm_eps`)."""
    rope_theta: float = 1_000_000.0
    """RoPE base frequency."""
    max_seq_len: int = 4096
    """Longest position the RoPE table covers (HF `max_position_embeddings`)."""
    tie_word_embeddings: bool = False
    """Whether the output projection reuses the embedding matrix."""

    def __post_init__(self) -> None:
        sizes = {"hidden_size": self.dim, "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
                 "num_key_value_heads": self.n_kv_heads, "head_dim": self.head_dim,
                 "intermediate_size": self.hidden_dim, "vocab_size": self.vocab_size,
                 "max_position_embeddings": self.max_seq_len}
        if bad := [f"{k} = {v}" for k, v in sizes.items() if v < 1]:
            raise ConformanceError(f"the model config is invalid: {', '.join(bad)}; every size must be >= 1. Fix the config.")
        if not (self.norm_eps > 0 and self.rope_theta > 0):
            raise ConformanceError(
                f"the model config is invalid: rms_norm_eps = {self.norm_eps} and rope_theta = {self.rope_theta} must both be > 0."
            )
        if self.n_heads % self.n_kv_heads:
            raise ConformanceError(
                f"the model config is inconsistent: num_attention_heads={self.n_heads} is not a multiple "
                f"of num_key_value_heads={self.n_kv_heads}. Fix the checkpoint's config.json."
            )

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], source: str = "config.json") -> "ModelArgs":
        """Reads a Qwen3 HF config dict; rejects other architectures with a clear error."""
        archs = cfg.get("architectures") or []
        if cfg.get("model_type") != "qwen3" and not set(archs) & set(SUPPORTED_ARCHITECTURES):
            raise ConformanceError(
                f"{source}: unsupported architecture (model_type={cfg.get('model_type')!r}, "
                f"architectures={archs}). titan_conformance's reference model is the Qwen3 dense "
                f"decoder ({', '.join(SUPPORTED_ARCHITECTURES)}); point --tc-model-path at a Qwen3 "
                "checkpoint or plug in your own system provider."
            )
        if cfg.get("rope_scaling"):
            raise ConformanceError(
                f"{source}: rope_scaling={cfg['rope_scaling']!r} is not supported by the reference "
                "Qwen3 model; use a checkpoint without RoPE scaling."
            )
        try:
            n_heads = int(cfg["num_attention_heads"])
            return cls(
                dim=int(cfg["hidden_size"]),
                n_layers=int(cfg["num_hidden_layers"]),
                n_heads=n_heads,
                n_kv_heads=int(cfg.get("num_key_value_heads", n_heads)),
                head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // n_heads),
                hidden_dim=int(cfg["intermediate_size"]),
                vocab_size=int(cfg["vocab_size"]),
                norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(cfg.get("rope_theta", 1_000_000.0)),
                max_seq_len=int(cfg.get("max_position_embeddings", 4096)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            )
        except KeyError as e:
            raise ConformanceError(
                f"{source}: required key {e.args[0]!r} is missing; a Qwen3 config.json needs "
                "hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, vocab_size."
            ) from None
        except (TypeError, ValueError) as e:
            raise ConformanceError(f"{source}: a value has the wrong type ({e}).") from None
        except ConformanceError as e:
            raise ConformanceError(f"{source}: {e}") from None

    def to_hf_config(self, torch_dtype: str = "float32") -> dict[str, Any]:
        return {
            "architectures": list(SUPPORTED_ARCHITECTURES),
            "model_type": "qwen3",
            "hidden_size": self.dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.hidden_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_seq_len,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "torch_dtype": torch_dtype,
        }

    def replace(self, **changes: Any) -> "ModelArgs":
        return ModelArgs(**{**asdict(self), **changes})
