"""Planted faults of the `vllm` variant: vLLM's engine given the wrong thing, or our sync to it
skipping part of the model. Provider factories, like faults.py's:

    pytest --pyargs titan_conformance --tc-suite qwen3-0.6b --tc-variant vllm --tc-system vllm_faults:NAME

with this folder on PYTHONPATH. The engine-side faults change the arguments the backend hands to
`vllm.LLM` for the one engine the factory builds; the graph ones need a GPU (vLLM's CPU platform
captures no graphs).
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable

from titan_conformance.providers.grpo import GRPOSystem
from titan_conformance.providers.reference import build_system


@contextlib.contextmanager
def _engine_arguments(change: Callable[[dict], None]):
    """While the system builds, `vllm.LLM(...)` gets its keyword arguments through `change`."""
    import vllm

    original = vllm.LLM

    def llm(*args, **kwargs):
        change(kwargs)
        return original(*args, **kwargs)

    vllm.LLM = llm
    try:
        yield
    finally:
        vllm.LLM = original


def _built_with(change: Callable[[dict], None]):
    def factory(profile, **kw) -> GRPOSystem:
        with _engine_arguments(change):
            return build_system(profile, **kw)

    factory.__doc__ = change.__doc__
    return factory


def _leave_out_a_capture_size(kwargs: dict) -> None:
    """vLLM is given every capture size of the policy but the middle one."""
    sizes = kwargs["compilation_config"]["cudagraph_capture_sizes"]
    sizes.remove(sizes[len(sizes) // 2])


def _piecewise(kwargs: dict) -> None:
    """The profile asks for FULL graphs; vLLM is told PIECEWISE."""
    kwargs["compilation_config"]["cudagraph_mode"] = "PIECEWISE"


def _raw_logprobs(kwargs: dict) -> None:
    """vLLM reports its raw logprobs: the model's, before the sampler divides by the temperature."""
    kwargs["logprobs_mode"] = "raw_logprobs"


vllm_capture_size_left_out = _built_with(_leave_out_a_capture_size)
vllm_full_as_piecewise = _built_with(_piecewise)
vllm_untempered_logprobs = _built_with(_raw_logprobs)


def sync_skips_a_block(profile, **kw) -> GRPOSystem:
    """Every weight sync sends the generator all the trainer's tensors but those of the middle
    block, which keeps the weights it started with."""
    system = build_system(profile, **kw)
    blocks = {int(m[1]) for n, _ in system.trainer.named_weights() if (m := re.search(r"layers\.(\d+)\.", n))}
    block = f"layers.{sorted(blocks)[len(blocks) // 2]}."
    load = system.generator.load_weights
    system.generator.load_weights = lambda named: load((n, t) for n, t in named if block not in n)
    return system
