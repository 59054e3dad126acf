"""The provider protocol: everything the checks may ask of a GRPO system under test.

Checks never reach past this protocol. Our reference system (`system.grpo_system`) is the default
provider; `--tc-system module:factory`, or an entry point in the group `titan_conformance.systems`,
plugs in another. A factory is called as `factory(profile, device=..., model_path=...)` and returns
an object with the attributes and methods of `ConformanceSystem`. A provider lists what it can do in
`capabilities`; a check that needs a capability the provider lacks is skipped with a reason.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Callable, Protocol, runtime_checkable

from titan_conformance.errors import ConformanceError

DEFAULT_FACTORY = "titan_conformance.system.grpo_system:build_system"
ENTRY_POINT_GROUP = "titan_conformance.systems"

CAPABILITIES = {
    "grpo": "step() runs one GRPO step and returns a StepRecord; validate() scores the validation set",
    "trainer_logprobs": "trainer_logprobs(completions) scores completions with the trainer",
    "generator_logprobs": "generator_logprobs(completions) scores completions with one generator prefill",
    "weight_sync": "sync_weights() pushes the trainer's weights into the generator",
    "compile_ledger": "compile_ledger() returns the CompileLedger of every compiled region",
    "startup_phases": "startup maps each startup phase to seconds",
    "cudagraphs": "the generator captures FULL CUDA graphs at the capture sizes",
    "capture_policy": "cudagraph_sizes()[0] is the capture-size policy's list, also where nothing is captured",
    "reference_logprobs": "reference_logprobs(completions, dtype) scores completions with a fresh eager copy of "
    "the trainer's model at dtype (float64: the oracle; the profile's dtype: the precision floor)",
    "decode_timing": "time_decode_step(batch, position) times one bare decode step, and each StepRecord's "
    "`decode` counts the rollout's decode steps and graph replays",
}


@runtime_checkable
class ConformanceSystem(Protocol):
    """A built GRPO system (trainer + generator) as the checks see it."""

    name: str
    capabilities: frozenset[str]
    startup: dict[str, float]
    """Seconds per startup phase (build, weight_load, compile, first_generate)."""
    device: object
    """The torch.device the system runs on."""
    task: object
    """The toy task (prompts via `sample`/`validation_set`, `reward`)."""

    # Optional, read by the report when present: `captures.seconds` (capture size -> seconds), and
    # `token_positions` on each StepRecord (for the per-position logprob-diff curve).

    def describe(self) -> dict[str, str]: ...
    def step(self): ...
    def validate(self): ...
    def rollout(self, problems, seed: int, n: int | None = None, temperature: float | None = None): ...
    def trainer_logprobs(self, completions): ...
    def generator_logprobs(self, completions): ...
    def sync_weights(self) -> None: ...
    def compile_ledger(self): ...
    def close(self) -> None: ...


def load_factory(spec: str | None) -> Callable[..., ConformanceSystem]:
    """`module:attr`, the name of an entry point in `titan_conformance.systems`, or None (ours)."""
    spec = spec or DEFAULT_FACTORY
    if ":" not in spec:
        found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        if spec not in found:
            raise ConformanceError(
                f"No system provider {spec!r}: pass module:factory, or install a package that "
                f"registers it in the entry-point group {ENTRY_POINT_GROUP!r} (found: "
                f"{', '.join(sorted(found)) or 'none'})."
            )
        return found[spec].load()
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConformanceError(f"System provider {spec!r}: cannot import {module_name!r} ({e}).") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConformanceError(f"System provider {spec!r}: {module_name} has no callable {attr!r}.")
    return factory
