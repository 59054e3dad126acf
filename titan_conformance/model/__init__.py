from titan_conformance.model.args import ModelArgs
from titan_conformance.model.qwen3 import Qwen3Model, TransformerBlock

__all__ = ["ModelArgs", "Qwen3Model", "TransformerBlock"]
