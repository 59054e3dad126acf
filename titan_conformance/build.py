"""Building the system under test, once per session: a failure is one failed build with its cause.

A provider that raises while building (any exception: a corrupt checkpoint, a bug, an API that
moved), or returns something that is not a `ConformanceSystem`, fails the first check that needs
the system with that one paragraph; every later check skips, naming the failed build. The report
records the failure with the profile and the device, so it says what was being built where.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable

from titan_conformance.errors import ConformanceError

REQUIRED = ("name", "capabilities", "startup", "device", "describe", "close")
"""What every system must have; what a capability needs is checked against `CAPABILITY_METHODS`."""
CAPABILITY_METHODS = {
    "grpo": ("step", "validate", "rollout", "task"),
    "trainer_logprobs": ("trainer_logprobs",),
    "generator_logprobs": ("generator_logprobs",),
    "weight_sync": ("sync_weights",),
    "compile_ledger": ("compile_ledger",),
    "cudagraphs": ("cudagraph_sizes",),
    "decode_probes": ("probe_decode",),
    "graph_bypass": ("rollout",),
    "capture_policy": ("cudagraph_sizes",),
    "reference_logprobs": ("reference_logprobs",),
    "decode_timing": ("time_decode_step",),
    "sequence_noise": ("rollout",),
    "activations": ("activations",),
}


@dataclass
class Build:
    """The outcome of building the session's system."""

    system: Any = None
    error: str | None = None
    """Why there is no system (one paragraph)."""
    skip: str | None = None
    """Why no system is built for these checks (not a failure)."""
    reported: bool = False
    """The first check that needed the system has failed with `error`."""
    cache_use: Any = None
    """What the session did with its `--tc-compile-cache` file (`CompileCacheUse`), if it has one."""


def missing_protocol(system: Any) -> list[str]:
    """The attributes and methods `system` lacks, for itself and for the capabilities it declares."""
    missing = [name for name in REQUIRED if not hasattr(system, name)]
    for capability in getattr(system, "capabilities", ()) or ():
        missing += [name for name in CAPABILITY_METHODS.get(capability, ()) if not hasattr(system, name)]
    return list(dict.fromkeys(missing))


def describe_failure(e: BaseException, what: str = "The system provider raised while building",
                     after: str = "The checks did not run.") -> str:
    """One paragraph: a ConformanceError as it is; anything else with its type and where it was raised."""
    if isinstance(e, ConformanceError):
        return str(e)
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (raised at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return f"{what}: {text}{where}. {after}"


def build(factory: Callable[..., Any], profile: Any, device: str, model_path: str | None, spec: str) -> Build:
    """The factory's system, or the reason there is none. Never raises an ordinary exception."""
    try:
        system = factory(profile, device=device, model_path=model_path)
    except Exception as e:  # every provider failure is a verdict of its own: one failed build
        return Build(error=describe_failure(e))
    except SystemExit as e:  # a provider must not end the gate's process: that too is a failed build
        return Build(error=describe_failure(e, "The system provider called sys.exit while building"))
    if missing := missing_protocol(system):
        close = getattr(system, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 -- the protocol error is the finding, not a second crash
                pass
        return Build(error=(
            f"System provider {spec!r} returned a {type(system).__name__!r} object, which lacks {', '.join(missing)} of the "
            "provider protocol (titan_conformance.protocol.ConformanceSystem): a factory must return a built "
            "system with those attributes and methods."
        ))
    return Build(system=system)
