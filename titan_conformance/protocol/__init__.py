"""The one boundary between the checks and a system under test: the provider protocol and its records.

Checks, the report and the TP harness import from here (and the profile), never from a provider.
"""

from titan_conformance.compilation.ledger import CompileEvent, CompileLedger
from titan_conformance.protocol.records import (
    CaptureSizes, Completion, DecodeProbe, GenerateStats, Problem, RankReport, Reward, StepRecord, Task,
)
from titan_conformance.protocol.probe_points import Activations
from titan_conformance.protocol.system import (
    CAPABILITIES, DEFAULT_FACTORY, ENTRY_POINT_GROUP, ConformanceSystem, load_factory,
)

__all__ = [
    "Activations", "CAPABILITIES", "DEFAULT_FACTORY", "ENTRY_POINT_GROUP", "CaptureSizes", "CompileEvent", "CompileLedger",
    "Completion", "ConformanceSystem", "DecodeProbe", "GenerateStats", "Problem", "RankReport", "Reward",
    "StepRecord", "Task", "load_factory",
]
