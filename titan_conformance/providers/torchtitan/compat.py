"""Finding torchtitan and the parts of its API the provider uses, with one clear error when it can't.

Whatever `import torchtitan` finds is used as is: a PyPI release, or a checkout installed with
`pip install -e` (how a torchtitan pull request is gated). Versions are reported, not enforced; what
is enforced is the API: every symbol below must exist where 0.3 keeps it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from titan_conformance.errors import ConformanceError

VERIFIED_VERSIONS = ("0.3.0",)
"""torchtitan releases this provider was run against."""
VERIFIED_TORCH = "2.13.0"
SUPPORTED_API = "0.3"
INSTALL_HINT = (
    "Install it with `pip install torchtitan==0.3.0 triton` (torchtitan's model code imports triton "
    "even on CPU), or `pip install -e <your torchtitan checkout>`."
)


@dataclass(frozen=True)
class TorchtitanAPI:
    """The torchtitan callables the provider builds from."""

    version: str
    location: str
    model_registry: Callable[..., Any]
    """torchtitan.models.qwen3.model_registry(flavor) -> ModelSpec."""
    apply_compile: Callable[..., None]
    """torchtitan.distributed.compile.apply_compile: regional compile, one block at a time."""
    CompileConfig: type
    ParallelismConfig: type
    TrainingConfig: type
    ParallelDims: type
    FusedQKVLinear: type
    """The fused q/k/v projection some flavors use (torchtitan's TP plan splits it by rows)."""
    compute_logprobs: Callable[..., Any]
    """torchtitan.components.loss.compute_logprobs(logits, labels)."""
    GRPOLoss: type
    """torchtitan.experiments.rl.losses.GRPOLoss."""
    ScaledDotProductAttention: type
    """torchtitan's causal SDPA inner attention (the trainer's on every device: see system.py)."""
    shims: tuple[str, ...] = ()
    """Names of the torch the provider stood in for so that torchtitan imports (`shim_torch`)."""


def torchtitan_version() -> str | None:
    """The installed torchtitan's version, None when it is not installed (no import)."""
    if importlib.util.find_spec("torchtitan") is None:
        return None
    try:
        return importlib.metadata.version("torchtitan")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed as a distribution)"


def _unsupported(found: str, detail: str) -> ConformanceError:
    import torch

    return ConformanceError(
        f"The torchtitan provider cannot use the torchtitan found here (version {found}, with torch "
        f"{torch.__version__}): {detail}. It supports the torchtitan {SUPPORTED_API} API (verified: "
        f"{', '.join(VERIFIED_VERSIONS)} with torch {VERIFIED_TORCH}, and on torch 2.11 with the stand-in "
        f"`shim_torch` puts in; torchtitan tracks recent torch). {INSTALL_HINT}"
    )


def shim_torch() -> tuple[str, ...]:
    """Stands in for what torchtitan 0.3 imports from a newer torch than 2.11 and the provider never
    reaches; returns the names it stood in for. torchtitan/distributed/fsdp.py imports
    torch.distributed.fsdp.DataParallelMeshDims (pytorch#176334, torch >= 2.13) from
    models/qwen3/parallelize.py, so `import torchtitan.models.qwen3` fails on torch 2.11; no torchtitan
    release or commit with the 0.3 API imports there (0.2.x lacks models.qwen3.model_registry). The
    provider parallelizes with skip_dp, which returns before torchtitan's FSDP code would build one:
    torchtitan needs only the name (it evaluates `DataParallelMeshDims | None` at import)."""
    import torch.distributed.fsdp as fsdp

    if hasattr(fsdp, "DataParallelMeshDims"):
        return ()

    class DataParallelMeshDims:
        def __init__(self, *args, **kwargs):
            import torch

            raise NotImplementedError(
                f"torch {torch.__version__} has no torch.distributed.fsdp.DataParallelMeshDims (torch >= 2.13); "
                "titan_conformance stood in for it only so that torchtitan imports, and torchtitan's FSDP path "
                "needs the real one: run it on torch >= 2.13."
            )

    DataParallelMeshDims.__module__ = fsdp.__name__
    fsdp.DataParallelMeshDims = DataParallelMeshDims
    return (f"{fsdp.__name__}.DataParallelMeshDims",)


def load_torchtitan() -> TorchtitanAPI:
    """Imports what the provider needs; a ConformanceError names what is missing and the versions."""
    version = torchtitan_version()
    if version is None:
        raise ConformanceError(f"--tc-system torchtitan: torchtitan is not installed. {INSTALL_HINT}")
    shims = shim_torch()
    needed = [
        ("torchtitan.models.qwen3", "model_registry"),
        ("torchtitan.distributed.compile", "apply_compile"),
        ("torchtitan.config", "CompileConfig"),
        ("torchtitan.config", "ParallelismConfig"),
        ("torchtitan.config", "TrainingConfig"),
        ("torchtitan.models.common.attention", "FusedQKVLinear"),
        ("torchtitan.distributed", "ParallelDims"),
        ("torchtitan.components.loss", "compute_logprobs"),
        ("torchtitan.models.common.attention", "ScaledDotProductAttention"),
    ]
    found = {}
    for module_name, attr in needed:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise _unsupported(version, f"`import {module_name}` failed ({type(e).__name__}: {e})") from None
        if not hasattr(module, attr):
            raise _unsupported(version, f"{module_name} has no {attr!r} (the API moved)")
        found[attr] = getattr(module, attr)
    import torchtitan

    return TorchtitanAPI(
        version=version,
        location=str(Path(torchtitan.__file__).parent),
        GRPOLoss=_rl_losses(version).GRPOLoss,
        shims=shims,
        **found,
    )


def experiments_rl_dir() -> Path | None:
    """The folder of torchtitan's `experiments/rl`, found without importing the rl package (whose
    __init__ needs vLLM)."""
    spec = importlib.util.find_spec("torchtitan.experiments")
    return Path(next(iter(spec.submodule_search_locations))) / "rl" if spec else None


def _rl_losses(version: str) -> types.ModuleType:
    """torchtitan.experiments.rl.losses. The rl package's __init__ imports vLLM and registers
    torchtitan's model with it, while the losses need only torchtitan's core: the losses package is
    loaded from its files under a placeholder parent package that is removed again afterwards."""
    name = "torchtitan.experiments.rl.losses"
    rl_dir = experiments_rl_dir()
    if rl_dir is None or not (rl_dir / "losses" / "__init__.py").exists():
        raise _unsupported(version, f"{name} is not there")
    try:
        with _placeholder_package("torchtitan.experiments.rl", rl_dir):
            module = importlib.import_module(name)
    except ImportError as e:
        raise _unsupported(version, f"`import {name}` failed ({type(e).__name__}: {e})") from None
    if not hasattr(module, "GRPOLoss"):
        raise _unsupported(version, f"{name} has no 'GRPOLoss' (the API moved)")
    return module


@contextmanager
def _placeholder_package(name: str, path: Path) -> Iterator[None]:
    """Lets submodules of package `name` import without running its __init__; afterwards the
    placeholder is gone, so a later real `import name` (with vLLM present) runs normally."""
    if name in sys.modules:
        yield
        return
    placeholder = types.ModuleType(name)
    placeholder.__path__ = [str(path)]
    sys.modules[name] = placeholder
    try:
        yield
    finally:
        sys.modules.pop(name, None)
