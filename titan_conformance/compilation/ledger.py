"""The recompile ledger: every Dynamo compilation of every compiled region, with its reason.

Counting goes through a backend wrapper (Dynamo's `counters["recompiles"]` is not reliable across
torch versions); the guard failure that triggered each recompile and any recompile-limit hit are
read from Dynamo's `recompiles` artifact log and its limit warning, which name the function. Each
compiled region has a function name of its own (see `regional.py`), so records map to regions.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch._logging._internal import log_state

_RECOMPILES_LOGGER = "torch._dynamo.guards.__recompiles"
_CONVERT_FRAME_LOGGER = "torch._dynamo.convert_frame"
_RECOMPILING = re.compile(r"Recompiling function (\S+) in ")
_LIMIT_HIT = re.compile(r"hit config\.(\w+) \((\d+)\)\s+function: '([^']+)'")
_LAST_REASON = re.compile(r"last reason: (?:\d+/\d+: )?(.*?)(?:  # |$)", re.MULTILINE)

STARTUP = "startup"
"""The phase of a ledger until whoever drives the system marks another (`CompileLedger.phase`): a
system compiles at startup whatever it builds before it is run."""


@dataclass
class CompileEvent:
    """One Dynamo compilation of one region."""

    region: str
    """The compiled region's name, e.g. `trainer.TransformerBlock`."""
    index: int
    """0 for the first compilation of the region, 1 for the first recompile, ..."""
    reason: str
    """The guard failure(s) that triggered it; "first compilation" for index 0."""
    inputs: list[str]
    """Shapes of the graph's tensor inputs (symbolic dims as s0, s1, ...)."""
    seconds: float
    """Time spent in the backend (Inductor codegen), excluding Dynamo tracing."""
    rank: int | None = None
    """The tensor-parallel rank whose process compiled it (None outside a TP run). Each rank is a
    process of its own, with its own cache and recompile budget."""
    phase: str = STARTUP
    """What the system was doing when it compiled: "startup", or the run's phase as its driver
    marked it ("step 3 of 20", "validation before the run", ...)."""

    @property
    def after_startup(self) -> bool:
        return self.phase != STARTUP

    @property
    def key(self) -> str:
        """What a recompile budget applies to: the region, per rank under TP."""
        return self.region if self.rank is None else f"{self.region}[rank {self.rank}]"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _inner_backend(name: str, dynamic: bool | None) -> Callable:
    """The backend a counting backend calls: for Inductor, torch.compile's own Inductor wrapper built
    per compilation from the `mode` and `options` it is handed (validated there, as torch.compile
    validates them); any other backend by name, with the keywords as given."""
    if name != "inductor":
        return torch._dynamo.lookup_backend(name)

    def inductor(gm: torch.fx.GraphModule, example_inputs: list[Any], mode: str | None = None,
                 options: dict | None = None) -> Callable:
        return torch._TorchCompileInductorWrapper(mode, options, dynamic)(gm, example_inputs)

    return inductor


def _describe(example_inputs: list[Any]) -> list[str]:
    out = []
    for x in example_inputs:  # activations only: parameters and lifted scalars say nothing here
        if isinstance(x, torch.Tensor) and not isinstance(x, torch.nn.Parameter) and x.dim() >= 2:
            out.append(f"{str(x.dtype).removeprefix('torch.')}[{', '.join(str(d) for d in x.shape)}]")
    return out


class _LogTap(logging.Filter):
    """One process-wide logger filter (filters survive torch._logging re-configuring handlers) that
    hands each record to every active ledger. One tap, not one per ledger: a filter that swallows a
    record stops the filters after it, so per-ledger filters would starve each other."""

    def __init__(self, swallow: bool) -> None:
        super().__init__()
        self.swallow = swallow

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for ledger in list(_ACTIVE):
            ledger._on_log(message)
        return not self.swallow


_ACTIVE: list["CompileLedger"] = []
_TAPS = {_RECOMPILES_LOGGER: _LogTap(swallow=True), _CONVERT_FRAME_LOGGER: _LogTap(swallow=False)}
_saved: dict[str, object] = {}
"""What the first active ledger changed (the recompiles logger's level, whether torch logged its
artifact), put back when the last one exits."""


def _activate(ledger: "CompileLedger") -> None:
    if not _ACTIVE:
        logger = logging.getLogger(_RECOMPILES_LOGGER)
        _saved.update(level=logger.level, artifact=log_state.is_artifact_enabled("recompiles"))
        log_state.enable_artifact("recompiles")
        for name, tap in _TAPS.items():
            logging.getLogger(name).addFilter(tap)
        logger.setLevel(logging.DEBUG)  # the reasons are kept off stderr by the tap; the ledger reports them
    _ACTIVE.append(ledger)


def _deactivate(ledger: "CompileLedger") -> None:
    if ledger in _ACTIVE:
        _ACTIVE.remove(ledger)
        if not _ACTIVE:
            for name, tap in _TAPS.items():
                logging.getLogger(name).removeFilter(tap)
            logging.getLogger(_RECOMPILES_LOGGER).setLevel(_saved["level"])
            if not _saved["artifact"]:
                log_state.artifact_names.discard("recompiles")


@dataclass(eq=False)  # identity: _ACTIVE finds and removes this ledger, not an equal one
class CompileLedger:
    """Collects compile events for the regions registered with it."""

    events: list[CompileEvent] = field(default_factory=list)
    limit_hits: list[str] = field(default_factory=list)
    _functions: dict[str, str] = field(default_factory=dict)  # Dynamo function name -> region
    _pending_reason: dict[str, str] = field(default_factory=dict)
    _backends: dict[tuple[str, str], Callable] = field(default_factory=dict)
    settings: dict[str, dict] = field(default_factory=dict)
    """Region -> the compile settings its blocks were given (`CompileConfig.settings`)."""
    observed: dict[str, list[dict]] = field(default_factory=dict)
    """Region -> the distinct `mode` and `options` its backend received at compile time."""
    calls: dict[str, int] = field(default_factory=dict)
    """Region -> how many times its compiled graphs ran (graph replays of CUDA graphs not counted:
    a replay runs no Python)."""
    phase: str = STARTUP
    """What the system is doing now, stamped on every event it compiles: "startup" until the run's
    driver (`run.perform_run`, the TP rank run) marks the run's phases, one step at a time."""

    def register(self, function_name: str, region: str, settings: dict | None = None) -> None:
        self._functions[function_name] = region
        if settings is not None:
            self.settings[region] = dict(settings)

    def record_uncompiled(self, region: str) -> None:
        """A region whose blocks run eagerly (compile disabled): recorded so the roles compare."""
        self.settings[region] = {"enable": False}

    def backend(self, region: str, inner: str, dynamic: bool | None = None) -> Callable:
        """A counting backend for `region` (one object per region: Dynamo guards on backend identity).

        torch.compile hands a backend callable its `mode` and `options` as keywords; for Inductor
        they become config patches, as torch.compile's own Inductor wrapper makes them, and they
        are recorded as what the region was compiled with (`observed`). Each compiled graph comes
        back wrapped so that its runs are counted (`calls`): a region that compiled but never runs
        compiled (an eager fallback, a stance that bypasses it) shows as calls that do not grow."""
        key = (region, inner)
        if key not in self._backends:
            inner_backend = _inner_backend(inner, dynamic)

            def counting_backend(gm: torch.fx.GraphModule, example_inputs: list[Any], **kwargs: Any) -> Callable:
                index = sum(e.region == region for e in self.events)
                reason = self._pending_reason.pop(region, "first compilation" if index == 0 else "unknown")
                start = time.perf_counter()
                compiled = inner_backend(gm, example_inputs, **kwargs)
                self.events.append(CompileEvent(
                    region, index, reason, _describe(example_inputs), time.perf_counter() - start, phase=self.phase
                ))
                seen = {"mode": kwargs.get("mode") or "default", "options": dict(kwargs.get("options") or {})}
                if seen not in (observed := self.observed.setdefault(region, [])):
                    observed.append(seen)
                return self._counted(region, compiled)

            self._backends[key] = counting_backend
        return self._backends[key]

    def _counted(self, region: str, compiled: Callable) -> Callable:
        calls = self.calls
        calls.setdefault(region, 0)

        def run_compiled(*args: Any, **kwargs: Any) -> Any:
            calls[region] += 1
            return compiled(*args, **kwargs)

        return run_compiled

    def effective_settings(self) -> dict[str, dict]:
        """Per region: the settings it was registered with, its `mode` and `options` as the backend
        received them at compile time (a list when its compilations received several)."""
        out = {}
        for region, settings in self.settings.items():
            settings = dict(settings)
            if seen := self.observed.get(region):
                for key in ("mode", "options"):
                    values = [s[key] for s in seen]
                    settings[key] = values[0] if len(seen) == 1 else values
            out[region] = settings
        return out

    def _on_log(self, message: str) -> None:
        if m := _RECOMPILING.search(message):
            if region := self._functions.get(m.group(1)):
                # "- 0/1: <guard>  # <first user line that used the value> ..." -> "<guard>"
                # Newer Dynamo appends "- User stack trace:" and its frames as more "- " lines.
                reasons = []
                for ln in message.splitlines():
                    ln = ln.strip()
                    if ln.startswith("- User stack trace"):
                        break
                    if ln.startswith("- "):
                        reasons.append(ln[2:].split("  # ")[0])
                self._pending_reason[region] = "; ".join(reasons) or "unknown"
        elif m := _LIMIT_HIT.search(message):
            if region := self._functions.get(m.group(3)):
                hit = f"{region}: hit {m.group(1)}={m.group(2)}"
                if last := _LAST_REASON.search(message):  # the guard failure it could not compile for
                    hit += f" (last reason: {last.group(1).strip()})"
                self.limit_hits.append(hit)

    def __enter__(self) -> "CompileLedger":
        """Starts reading Dynamo's recompile reasons and limit warnings into this ledger."""
        _activate(self)
        return self

    def __exit__(self, *exc: object) -> None:
        """Stops reading Dynamo's logs and puts Dynamo's recompile limit back as it was."""
        _deactivate(self)
        if (patch := self.__dict__.pop("_limit_patch", None)) is not None:
            patch.__exit__(None, None, None)

    def use_recompile_limit(self, limit: int) -> None:
        """Dynamo's recompile limit (process-wide; Dynamo has no other) while this ledger is active,
        from the profile: the limit its regions are compiled and judged under. An inactive ledger
        changes nothing (it would have nothing to put it back at)."""
        if self not in _ACTIVE:
            return
        if (patch := self.__dict__.get("_limit_patch")) is not None:
            patch.__exit__(None, None, None)
        self._limit_patch = torch._dynamo.config.patch(recompile_limit=limit)
        self._limit_patch.__enter__()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.events:
            out[e.key] = out.get(e.key, 0) + 1
        return out

    def format(self) -> str:
        lines = [f"{'region':<34} {'#':>3} {'backend s':>9}  inputs / reason"]
        for e in self.events:
            lines.append(f"{e.key:<34} {e.index:>3} {e.seconds:>9.2f}  {' '.join(e.inputs)}  ({e.phase})")
            lines.append(f"{'':<50}reason: {e.reason}")
        lines += [f"LIMIT HIT: {h}" for h in self.limit_hits]
        return "\n".join(lines)
