"""torchtitan's own capture-size policy (its generator's `VLLMCudagraphConfig`), run as is.

The policy lives in `torchtitan/experiments/rl/actors/generator.py`, whose imports need vLLM,
Monarch and torchstore. When that module imports, its class is used directly; otherwise the class
(and the constant it reads) is compiled from that file alone, with stand-ins for the vLLM config
types it returns, so a torchtitan pull request that changes the policy changes what we capture.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import logging
import math
import typing
from dataclasses import dataclass

from titan_conformance.profile.cudagraph import policy_capture_sizes
from titan_conformance.providers.torchtitan.compat import experiments_rl_dir

POLICY_MODULE = "torchtitan.experiments.rl.actors.generator"
POLICY_CLASS = "VLLMCudagraphConfig"
_CONSTANTS = ("_DEFAULT_MAX_NUM_BATCHED_TOKENS",)
_GENERATOR_STACK = ("vllm", "monarch", "torchstore", "cloudpickle")


@dataclass(frozen=True)
class CapturePolicy:
    """What torchtitan's policy yields for a profile, next to ours."""

    sizes: list[int]
    """torchtitan's sizes in FULL_DECODE_ONLY mode: the decode batches the native generator graphs."""
    full_mode_sizes: list[int]
    """torchtitan's sizes in its default FULL mode, which also graphs prefill token counts (up to
    max_num_batched_tokens); the native generator runs prefill without graphs."""
    ours: list[int]
    """Our policy's sizes for the same max_num_seqs."""
    source: str
    """Where the policy came from (imported, or compiled from torchtitan's file)."""

    def note(self) -> str:
        """One line for the report: where ours and torchtitan's agree or differ."""
        agree = "agrees with ours" if self.sizes == self.ours else f"differs from ours {self.ours}"
        return (
            f"torchtitan decode capture sizes {self.sizes} ({agree}); its default FULL mode would "
            f"capture {self.full_mode_sizes} (prefill token counts included). Source: {self.source}."
        )


class _VllmConfigStandIn(dict):
    """Stands for vLLM's CompilationConfig / PassConfig: keeps the keyword arguments."""

    def __init__(self, **kwargs) -> None:
        super().__init__(kwargs)


def _policy_class() -> tuple[type, str]:
    # Importing the module runs the rl package's __init__ (which also sets PYTORCH_CUDA_ALLOC_CONF):
    # only where its generator stack is installed.
    if all(importlib.util.find_spec(m) for m in _GENERATOR_STACK):
        try:
            return getattr(importlib.import_module(POLICY_MODULE), POLICY_CLASS), f"{POLICY_MODULE}.{POLICY_CLASS} (imported)"
        except ImportError:
            pass
    rl_dir = experiments_rl_dir()
    if rl_dir is None:
        raise LookupError("torchtitan has no experiments package")
    path = rl_dir / "actors" / "generator.py"
    tree = ast.parse(path.read_text(), str(path))
    wanted = [
        node for node in tree.body
        if (isinstance(node, ast.ClassDef) and node.name == POLICY_CLASS)
        or (isinstance(node, ast.Assign) and any(getattr(t, "id", None) in _CONSTANTS for t in node.targets))
    ]
    if not any(isinstance(n, ast.ClassDef) for n in wanted):
        raise LookupError(f"{path} defines no {POLICY_CLASS}")
    modes = type("Modes", (), {"NONE": "NONE", "FULL": "FULL", "FULL_DECODE_ONLY": "FULL_DECODE_ONLY"})
    namespace = {
        "math": math, "logger": logging.getLogger(POLICY_MODULE), "dataclass": dataclass,
        "field": dataclasses.field, "Literal": typing.Literal,
        "CompilationConfig": _VllmConfigStandIn, "PassConfig": _VllmConfigStandIn,
        "CUDAGraphMode": modes, "CompilationMode": modes, "__name__": __name__,
    }
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    return namespace[POLICY_CLASS], f"{POLICY_CLASS} compiled from torchtitan/experiments/rl/actors/generator.py"


def _sizes(policy_class: type, mode: str, max_num_seqs: int) -> list[int]:
    config = policy_class(enable=True, mode=mode).get_vllm_compilation_config(
        max_num_seqs=max_num_seqs, expert_sequence_parallel_size=1, enable_sequence_parallel=False
    )
    sizes = config["cudagraph_capture_sizes"] if isinstance(config, dict) else config.cudagraph_capture_sizes
    return sorted(sizes)


def torchtitan_capture_policy(max_num_seqs: int) -> CapturePolicy:
    """Runs torchtitan's policy for `max_num_seqs`; LookupError when it can't be found or run."""
    try:
        policy_class, source = _policy_class()
        decode, full = (_sizes(policy_class, mode, max_num_seqs) for mode in ("FULL_DECODE_ONLY", "FULL"))
    except (OSError, SyntaxError, NameError, TypeError, AttributeError, KeyError, ValueError) as e:
        raise LookupError(f"torchtitan's capture-size policy could not be run: {type(e).__name__}: {e}") from None
    return CapturePolicy(decode, full, policy_capture_sizes(max_num_seqs), source)
