"""The reference provider (entry point `reference`, the default): our Qwen3 GRPO system. The plugin
reads the factory's defaults on the controller, which runs no system: the stack is imported when
a system is built."""

from __future__ import annotations


def build_system(profile, device: str = "cpu", model_path: str | None = None, ledger=None):
    """The default provider factory. `ledger`: record compilations there (kept even when building fails)."""
    from titan_conformance.providers.grpo import GRPOSystem
    from titan_conformance.providers.reference.stack import ReferenceStack

    return GRPOSystem(profile, ReferenceStack(), device=device, model_path=model_path, ledger=ledger)


build_system.default_suite = "tiny-cpu"
"""Read by the plugin: the suite this provider runs when --tc-suite is not given."""
build_system.default_gpu_suite = "qwen3-0.6b"
"""Read by the plugin: the suite it runs where torch sees CUDA (with the variants that apply)."""
build_system.generators = ("native", "vllm")
"""Read by the plugin: the generator backends this provider drives (`--tc-generator auto` picks vLLM when it imports)."""
