"""How a check's result and a worker's GRPO run become JSON-able records of a report.

Everything returned here is plain JSON data (str, int, float, bool, None, list, dict with str keys),
so it crosses from an xdist worker to the controller as is. Non-finite floats become the strings
"nan", "inf" and "-inf" (JSON has no literal for them).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from titan_conformance.protocol import StepRecord

HISTOGRAM_BINS = 41


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data: tensors and numpy scalars as numbers or lists, dataclasses as dicts."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in (sorted(value) if isinstance(value, (set, frozenset)) else value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return jsonable(value.tolist())
    return str(value)


def check_record(result: Any) -> dict[str, Any]:
    """A CheckResult: its name, verdict, message, metrics and the limits they were held to."""
    return {
        "name": str(result.name),
        "passed": bool(result.passed),
        "message": str(result.message),
        "metrics": jsonable(result.metrics),
        "limits": jsonable(result.limits),
    }


def _nvidia_smi() -> dict[str, str]:
    """GPU name and driver version from nvidia-smi (never initializes CUDA in this process)."""
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    first = out.strip().splitlines()[0] if out.strip() else ""
    name, _, driver = first.partition(",")
    return {"gpu": name.strip(), "driver": driver.strip()} if driver else {}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment(options: dict[str, Any], runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Where the report was made. Device facts come from the first variant's run, when one ran."""
    first = next(iter(runs.values()), {})
    versions = first.get("versions", {})
    smi = _nvidia_smi()
    system = first.get("system", {})
    suite = str(options.get("suite") or "")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "titan_conformance": _version("titan-conformance"),
        "torch": versions.get("torch") or _version("torch"),
        "cuda": versions.get("cuda"),
        "driver": smi.get("driver"),
        "gpu": versions.get("gpu") or smi.get("gpu"),
        "vllm": _version("vllm"),
        "profile": str(first.get("profile") or "").split("[")[0] or Path(suite).name.removesuffix(".toml"),
        "profile_description": first.get("profile_description", ""),
        "device": first.get("device") or options.get("device"),
        "device_class": first.get("device_class"),
        "dtype": system.get("dtype"),
        # Each variant's sampling spec and the logprob semantics both sides report under it.
        "sampling": {variant: run["sampling"] for variant, run in runs.items() if run.get("sampling")},
        "backend": {
            "provider": system.get("provider") or options.get("system") or "reference",
            "generator": system.get("generator") or options.get("generator"),
            "compile": first.get("compile", {}).get("backend"),
        },
        # What else the provider says about itself (torchtitan: version and location, flavor,
        # where its capture-size policy and ours differ).
        "system_details": {k: v for k, v in system.items() if k not in ("provider", "generator", "device", "dtype", "torch")},
        "options": jsonable(options),
        "argv": sys.argv[1:],
    }


def _diff_summary(records: list[Any], tolerance: float) -> dict[str, Any] | None:
    """Statistics, a histogram and a per-position curve of trainer - generator logprobs."""
    import torch

    from titan_conformance.checks.parity import diff_stats, flat

    diff = flat([r.logprob_diff for r in records]).float()
    if diff.numel() == 0:
        return None
    finite = torch.isfinite(diff)  # histograms and curves of the finite values, saying how many are not
    shown = diff[finite]
    bound = float(shown.abs().max()) if shown.numel() else 0.0
    bound = bound or 1e-12
    counts = torch.histc(shown, bins=HISTOGRAM_BINS, min=-bound, max=bound)
    out: dict[str, Any] = {
        "stats": jsonable(diff_stats(diff, tolerance)),
        "tolerance_max_abs": tolerance,
        "histogram": {
            "edges": [-bound + 2 * bound * i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)],
            "counts": [int(c) for c in counts.tolist()],
            "exact_zeros": int((shown == 0).sum()),
            "non_finite": int((~finite).sum()),
        },
        "per_position": None,
    }
    positions = [r.token_positions for r in records]
    if all(p is not None and p.numel() == r.logprob_diff.numel() for p, r in zip(positions, records)):
        pos = torch.cat([p.flatten().long() for p in positions])[finite]
        size, a = int(pos.max()) + 1 if pos.numel() else 1, shown.abs().double()
        tokens = torch.zeros(size, dtype=torch.float64).index_add_(0, pos, torch.ones_like(a))
        total = torch.zeros(size, dtype=torch.float64).index_add_(0, pos, a)
        peak = torch.zeros(size, dtype=torch.float64).scatter_reduce_(0, pos, a, "amax")
        out["per_position"] = {
            "tokens": [int(t) for t in tokens.tolist()],
            "mean_abs": jsonable((total / tokens.clamp(min=1)).tolist()),
            "max_abs": jsonable(peak.tolist()),
        }
    return out


def _step(record: StepRecord) -> dict[str, Any]:
    times = {k: float(v) for k, v in record.times.items()}
    return jsonable({
        "step": record.step, "times": times, "seconds": sum(times.values()), "loss": record.loss,
        "reward": record.reward.total, "avg_tokens": record.avg_tokens,
        "decode": record.decode,
    })


def _capture(system: Any, profile: Any) -> dict[str, Any]:
    """The system's capture sizes as it reports them (its policy, what it captured, per-size time)."""
    sizes = system.cudagraph_sizes() if "capture_policy" in system.capabilities else None
    return jsonable({
        "mode": profile.cudagraph.mode.on(system.device).value,
        "policy": list(sizes.policy) if sizes else [],
        "captured": list(sizes.captured) if sizes else [],
        "seconds": system.startup.get("capture"),
        "seconds_per_size": dict(sizes.seconds) if sizes else {},
    })


def _versions(device: Any) -> dict[str, Any]:
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": None}
    if getattr(device, "type", None) == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def run_record(run: Any, profile: Any) -> dict[str, Any]:
    """What one worker's GRPO run (a `ConformanceRun`) measured, for the report and its plots."""
    from titan_conformance.checks.budgets import device_class

    system = run.system
    tolerance = 0.0 if profile.tolerances.bitwise else profile.tolerance.max_abs
    counts: dict[str, int] = {}
    for e in run.compile_events:
        counts[e.region] = counts.get(e.region, 0) + 1
    try:
        described = dict(system.describe())
    except Exception as e:  # a provider's describe() must not cost the report
        described = {"describe_error": f"{type(e).__name__}: {e}"}
    return jsonable({
        "profile": profile.name,
        "profile_description": profile.description,
        "sampling": profile.sampling.spec.describe(),
        "system": described,
        "device": str(system.device),
        "device_class": device_class(system.device),
        "versions": _versions(system.device),
        "startup": {k: float(v) for k, v in system.startup.items()},
        "steps": [_step(r) for r in run.records],
        "pre_reward": getattr(run.pre, "total", None),
        "post_reward": getattr(run.post, "total", None),
        "error": run.error,
        "logprob_diff": _diff_summary(run.records, tolerance) if run.records else None,
        "compile": {
            "enabled": profile.compile.enable,
            "backend": profile.compile.backend if profile.compile.enable else "eager",
            "recompile_limit": profile.compile.recompile_limit,
            "counts": counts,
            "events": [e.to_dict() for e in run.compile_events],
            "limit_hits": list(run.limit_hits),
            "cache": dict(run.compile_cache),
        },
        "capture": _capture(system, profile),
    })


def failed_build_record(profile: Any, device: Any, error: str) -> dict[str, Any]:
    """A worker's run whose system did not build: what was built where, and why it failed."""
    from titan_conformance.checks.budgets import device_class

    return jsonable({
        "profile": profile.name,
        "profile_description": profile.description,
        "sampling": profile.sampling.spec.describe(),
        "system": {},
        "device": str(device),
        "device_class": device_class(device),
        "versions": _versions(device),
        "startup": {},
        "steps": [],
        "error": f"build failed: {error}",
        "logprob_diff": None,
        "compile": {"enabled": profile.compile.enable, "counts": {}, "events": [], "limit_hits": []},
        "capture": None,
    })
