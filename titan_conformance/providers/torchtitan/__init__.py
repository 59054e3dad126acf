"""The torchtitan provider (entry point `torchtitan`). This module imports neither torch nor
torchtitan: the plugin reads the provider's defaults from its entry point's factory."""

DEFAULT_SUITE = "torchtitan-debugmodel"
"""The suite `--tc-system torchtitan` runs when no --tc-suite is given."""


def build_system(profile, device: str = "cpu", model_path: str | None = None, ledger=None):
    """The `torchtitan` entry point's factory: the shared GRPO system over torchtitan's model stack."""
    from titan_conformance.providers.grpo import GRPOSystem
    from titan_conformance.providers.torchtitan.stack import TorchtitanStack

    return GRPOSystem(profile, TorchtitanStack(), device=device, model_path=model_path, ledger=ledger)


def unavailable() -> str | None:
    """Why torchtitan cannot be used here because it is not installed, or None. An installed
    torchtitan that fails to import or whose API moved is not "unavailable": building the system
    fails, naming the import that broke (a broken torchtitan is what a bad torchtitan PR looks like)."""
    from titan_conformance.providers.torchtitan.compat import INSTALL_HINT, torchtitan_version

    return f"torchtitan is not installed. {INSTALL_HINT}" if torchtitan_version() is None else None


build_system.default_suite = DEFAULT_SUITE
"""Read by the plugin: the suite this provider runs by default."""
build_system.default_gpu_suite = "torchtitan-qwen3-0.6b"
"""Read by the plugin: the suite it runs by default where torch sees CUDA."""
build_system.unavailable = unavailable
"""Read by the plugin: a variant built by this provider skips with this reason."""
build_system.generators = ("native",)
"""Read by the plugin: the generator backends this provider drives (`--tc-generator auto` keeps these)."""
