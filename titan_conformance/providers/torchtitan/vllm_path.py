"""torchtitan's own vLLM path (`register_to_vllm` + its GPU worker), and whether it works here.

torchtitan registers its model with vLLM as `TorchTitanCausalLM` and runs it in vLLM through its own
worker class (`TorchTitanGPUWorker`), FLEX_ATTENTION or a CUDA varlen attention backend and an
`external_launcher` executor: a CUDA-only path. This module tries the registration step against
the installed vLLM, so a report (and the error for `--tc-generator vllm`) says what works here.
"""

from __future__ import annotations

from titan_conformance.vllm_support import vllm_version

CUDA_ONLY = (
    "torchtitan's vLLM generator runs only on CUDA vLLM: its worker is TorchTitanGPUWorker and its "
    "attention FLEX_ATTENTION or a CUDA varlen backend"
)


def vllm_registration_status(flavor: str) -> str:
    """One line: torchtitan's model registered with the installed vLLM, or why not."""
    version = vllm_version()
    if version is None:
        return "vLLM is not installed: torchtitan's vLLM registration was not tried"
    try:
        from torchtitan.components.checkpoint import CheckpointManager
        from torchtitan.config import CompileConfig, OverrideConfig
        from torchtitan.experiments.rl.models.vllm_registry import (
            VLLM_MODEL_NAME, InferenceParallelismConfig, register_to_vllm,
        )
        from torchtitan.models.qwen3 import model_registry

        register_to_vllm(
            model_registry(flavor), parallelism=InferenceParallelismConfig(), compile_config=CompileConfig(),
            checkpoint_config=CheckpointManager.Config(), override=OverrideConfig(),
        )
        from vllm import ModelRegistry

        registered = VLLM_MODEL_NAME in ModelRegistry.get_supported_archs()
    except Exception as e:  # any failure of torchtitan's code against this vLLM is the finding
        return f"torchtitan's register_to_vllm fails with vLLM {version}: {type(e).__name__}: {str(e).splitlines()[0]}"
    if not registered:
        return f"torchtitan's register_to_vllm ran with vLLM {version} but {VLLM_MODEL_NAME} is not in vLLM's registry"
    return f"torchtitan's register_to_vllm registers {VLLM_MODEL_NAME} with vLLM {version}"
