"""A compile cache kept between runs: how a GPU runner starts fast without an Inductor cache dir.

A fresh runner compiles every region from scratch: on an H200, qwen3-0.6b's generator spends 15-23 s
in compile + capture of 7 graphs, most of it Inductor and Triton. `torch.compiler` can hand out
everything it compiled or loaded in this process as one blob (FX graphs, AOTAutograd entries, Triton
kernels, autotuning results) and take such a blob back before anything compiles; a runner that
keeps the file between jobs (e.g. an actions/cache entry) starts in 6.5 s (`benchmarks/startup.py`,
H200). Entries are keyed by graph, config and version hashes, so a change that alters a graph
misses and compiles as if cold: the file can make a run faster, never different.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from titan_conformance.errors import ConformanceError


@dataclass
class CompileCacheUse:
    """What this process did with a compile-cache file, for the report."""

    restored_bytes: int = 0
    """Size of the blob loaded before compiling (0: no file yet, a cold start)."""
    saved_bytes: int = 0
    """Size of the blob written after startup."""


def restore_compile_cache(path: Path) -> CompileCacheUse:
    """Loads `path` into torch.compiler's caches; a missing file is a cold start, not an error."""
    if not path.exists():
        return CompileCacheUse()
    blob = path.read_bytes()
    try:
        loaded = torch.compiler.load_cache_artifacts(blob)
        problem = "" if loaded is not None else "torch could not unpickle it"
    except Exception as e:
        problem = f"{type(e).__name__}: {str(e)[:200]}"
    if problem:
        raise ConformanceError(
            f"The compile cache {path} could not be loaded ({problem}). It is corrupt or was written by "
            "an incompatible torch; delete it, and this run will compile from scratch and write a new one."
        )
    return CompileCacheUse(restored_bytes=len(blob))


def save_compile_cache(path: Path, use: CompileCacheUse) -> None:
    """Writes what this process compiled or loaded to `path`, atomically (a temp file renamed into
    place, so a concurrent worker or a killed run never leaves half a blob)."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:  # nothing was compiled (compile disabled)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(artifacts[0])
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    use.saved_bytes = len(artifacts[0])


def compile_cache_counters() -> dict[str, int]:
    """Inductor's FX-graph and AOTAutograd cache hits and misses in this process: whether a run's
    compile and startup times are cold or warm."""
    from torch._dynamo.utils import counters

    names = ("fxgraph_cache_hit", "fxgraph_cache_miss", "autograd_cache_hit", "autograd_cache_miss")
    groups = (counters["inductor"], counters["aot_autograd"])
    return {name: sum(int(g.get(name, 0)) for g in groups) for name in names}
