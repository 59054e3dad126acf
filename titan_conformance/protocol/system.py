"""The provider protocol: everything the checks may ask of a GRPO system under test.

Checks never reach past this protocol. Our reference system (`providers.reference`) is the default
provider; `--tc-system module:factory`, or an entry point in the group `titan_conformance.systems`,
plugs in another. A factory is called as `factory(profile, device=..., model_path=...)` and returns
an object with the attributes and methods of `ConformanceSystem`. A provider lists what it can do in
`capabilities`; a check that needs a capability the provider lacks is skipped with a reason, and
a system may say why it lacks one in an optional `unavailable` (capability -> what is missing).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Callable, Protocol, runtime_checkable

import torch

from titan_conformance.compilation.ledger import CompileLedger
from titan_conformance.errors import ConformanceError
from titan_conformance.profile import SamplingSpec
from titan_conformance.protocol.probe_points import Activations
from titan_conformance.protocol.records import (
    CaptureSizes, Completion, DecodeProbe, GenerateStats, Problem, Reward, StepRecord, Task,
)

DEFAULT_FACTORY = "titan_conformance.providers.reference:build_system"
ENTRY_POINT_GROUP = "titan_conformance.systems"

CAPABILITIES = {
    "grpo": "step() runs one GRPO step and returns a StepRecord; validate() scores the validation set",
    "trainer_logprobs": "trainer_logprobs(completions) scores completions with the trainer",
    "generator_logprobs": "generator_logprobs(completions) scores completions with one generator prefill",
    "weight_sync": "sync_weights() pushes the trainer's weights into the generator",
    "compile_ledger": "compile_ledger() returns the CompileLedger of every compiled region",
    "startup_phases": "startup maps each startup phase to seconds",
    "cudagraphs": "the generator holds FULL CUDA graphs: cudagraph_sizes() names their sizes, the mode its engine "
    "resolved and (where counted) how many times each size was captured",
    "decode_probes": "probe_decode(batch, how) runs consecutive decode steps of batch distinct prompts of different "
    "lengths from a fixed state, by graph (padded to its capture size), compiled step or eagerly, and returns a "
    "DecodeProbe: each step's logprobs and samples, the keys and values each real row wrote, and every other "
    "cache slot the steps wrote outside the generator's scratch slots",
    "graph_bypass": "rollout(..., graphs=False) runs the same rollout with the generator's captured graphs bypassed, "
    "and last_decode counts the latest rollout's decode steps and graph replays",
    "capture_policy": "cudagraph_sizes().policy is the capture-size policy's list, also where nothing is captured",
    "reference_logprobs": "reference_logprobs(completions, dtype) scores completions with a fresh eager copy of "
    "the trainer's model at dtype (float64: the oracle; the profile's dtype: the precision floor)",
    "decode_timing": "time_decode_step(batch, position) times one bare decode step (None where that batch runs "
    "without a graph the generator can replay alone), and each StepRecord's "
    "`decode` counts the rollout's decode steps and graph replays",
    "sequence_noise": "rollout(..., sequence_noise=True) draws each sequence's sampling noise from a generator "
    "of its own, seeded by the seed and the sequence (not its row): among other neighbours a batch-invariant "
    "generator then samples it the same tokens",
    "activations": "activations(completions, side, dtype) runs one side on a few completions' tokens and returns "
    "its intermediate tensors at the probe points (`protocol.probe_points`): side \"trainer\" by its training "
    "forward, \"generator\" by its real prefill path (its cache attention), both compiled as in the run, "
    "\"reference\" by a fresh eager copy at dtype (float64: the oracle)",
    "tensor_parallel": "built on every rank of a process group at parallel.tp > 1; weight_checksums() sums "
    "each full (gathered) parameter",
}


@runtime_checkable
class ConformanceSystem(Protocol):
    """A built GRPO system (trainer + generator) as the checks see it. The methods a capability
    names (`CAPABILITIES`) are needed only where the system declares that capability."""

    name: str
    capabilities: frozenset[str]
    startup: dict[str, float]
    """Seconds per startup phase (build, weight_load, warmup, compile, capture, first_generate)."""
    device: torch.device
    """The device the system runs on."""
    task: Task
    """The task it trains on (grpo)."""
    last_decode: GenerateStats | None
    """The decode steps and graph replays of the latest rollout (graph_bypass)."""

    def describe(self) -> dict[str, str]: ...
    def step(self) -> StepRecord: ...
    def validate(self) -> Reward: ...
    def rollout(self, problems: list[Problem], seed: int, n: int | None = None,
                sampling: SamplingSpec | None = None, graphs: bool = True, sequence_noise: bool = False,
                ) -> list[Completion]: ...
    def trainer_logprobs(self, completions: list[Completion]) -> list[torch.Tensor]: ...
    def generator_logprobs(self, completions: list[Completion]) -> list[torch.Tensor]: ...
    def reference_logprobs(self, completions: list[Completion], dtype: torch.dtype) -> list[torch.Tensor]: ...
    def activations(self, completions: list[Completion], side: str, dtype: torch.dtype | None = None) -> Activations: ...
    def sync_weights(self) -> None: ...
    def compile_ledger(self) -> CompileLedger: ...
    def cudagraph_sizes(self) -> CaptureSizes: ...
    def probe_decode(self, batch: int, how: str) -> DecodeProbe: ...
    def time_decode_step(self, batch: int, position: int) -> float | None: ...
    def weight_checksums(self) -> dict[str, float]: ...
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
        try:
            return found[spec].load()
        except (Exception, SystemExit) as e:  # a provider whose import fails in any way is not usable
            raise ConformanceError(
                f"System provider {spec!r} (entry point {found[spec].value}) does not load: {type(e).__name__}: {e}. "
                "Fix or reinstall the package that provides it."
            ) from None
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as e:
        raise ConformanceError(
            f"System provider {spec!r}: cannot import {module_name!r} ({type(e).__name__}: {e}). Point "
            "--tc-system at an importable module:factory."
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConformanceError(f"System provider {spec!r}: {module_name} has no callable {attr!r}.")
    return factory
