"""A compile cache kept between runs: how a GPU runner starts fast without an Inductor cache dir.

A fresh runner compiles every region from scratch: on an H200, qwen3-0.6b's generator spends 5-7 s
in compile + capture of 7 graphs (one compile of its block, with the warm start, `warm_start.py`),
most of it Inductor and Triton. `torch.compiler` can hand out what it compiled or loaded in this process as one blob (FX
graphs, AOTAutograd entries, the Triton kernels Inductor generated, autotuning results) and take
such a blob back before anything compiles; a runner that keeps the file between jobs (e.g. an
actions/cache entry) started in 1.67 s (`benchmarks/startup.py`, H200). Kernels that a custom op
launches itself (our cache attention and sampler) are not in that blob: the file carries their
Triton cache entries beside it (`triton_kernels.py`), so a fresh runner compiles neither. The file
is a zip archive after a header line: `torch.bin` and `triton/<hash>/<file>`. Entries are keyed by
graph, config and version hashes, so a change that alters a graph misses and compiles as if cold:
the file can make a run faster, never different. For the same reason an unusable file (corrupt,
written by another torch, unreadable) is a warning and a cold start, never a failed gate.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from titan_conformance.compilation.triton_kernels import compiled_kernels, pack_kernels, unpack_kernels
from titan_conformance.errors import ConformanceError

log = logging.getLogger(__name__)

MAGIC = b"titan_conformance compile cache 2\n"
"""The first bytes of every file this module writes (the format's version last)."""

_OURS = MAGIC[:MAGIC.rindex(b" ") + 1]
"""What every version's header starts with: a path holding anything else is not ours to overwrite."""

_TORCH_MEMBER = "torch.bin"
"""The archive member holding torch.compiler's cache artifacts."""


def check_cache_path(path: Path) -> None:
    """A usable `--tc-compile-cache` path: absent (a cold start, written after startup), or a file
    this tool wrote. A folder, or any other file (which the save would overwrite), is refused."""
    if path.is_dir():
        raise ConformanceError(
            f"--tc-compile-cache {path} is a folder; pass a file path inside it, e.g. {path / 'compile-cache.bin'}."
        )
    if not path.exists():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError as e:
        raise ConformanceError(f"--tc-compile-cache {path} cannot be read ({e}); pass a readable file or a new path.") from None
    if not head.startswith(_OURS):
        raise ConformanceError(
            f"--tc-compile-cache {path} exists and is not a compile cache written by titan_conformance, so it "
            "would be overwritten after startup; pass a new path (the first run writes it) or remove that file."
        )


@dataclass
class CompileCacheUse:
    """What this process did with a compile-cache file, for the report."""

    restored_bytes: int = 0
    """Size of torch.compile's blob loaded before compiling (0: no usable file, a cold start)."""
    restored_kernels: int = 0
    """Triton kernels of custom ops put back into Triton's cache (not already there)."""
    saved_bytes: int = 0
    """Size of the file written after startup."""
    saved_kernels: int = 0
    """Triton kernels of custom ops written into it."""
    problem: str = ""
    """Why the file was not restored or not saved, when it was not ('' when all went well)."""


def variant_cache_path(path: Path, variant: str) -> Path:
    """The cache file of one variant of a suite: `path` for the base, `path.<variant>` beside it
    for the others (each variant's workers write their own, so no two workers race on one file)."""
    return path if variant == "base" else path.with_name(f"{path.name}.{variant}")


_restored_inductor_code = False
"""Whether this process's last restore loaded compiled Inductor graphs (torch's caches are per process)."""


def restored_inductor_code() -> bool:
    """Whether the last `restore_compile_cache` in this process loaded compiled Inductor graphs: a
    startup that finds its graphs there loads them, with nothing for Inductor's compile workers to do."""
    return _restored_inductor_code


def _open_archive(path: Path) -> zipfile.ZipFile:
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError("it was written by another version of titan_conformance" if data.startswith(_OURS)
                         else "it was not written by titan_conformance")
    return zipfile.ZipFile(io.BytesIO(data[len(MAGIC):]))


def restore_compile_cache(path: Path) -> CompileCacheUse:
    """Loads `path` into torch.compiler's caches and its Triton kernels into Triton's; a missing file
    is a cold start, an unusable one a warning and a cold start (the save after startup replaces it)."""
    global _restored_inductor_code
    _restored_inductor_code = False
    use = CompileCacheUse()
    if not path.exists():
        return use
    try:
        archive = _open_archive(path)
        if _TORCH_MEMBER in archive.namelist():
            blob = archive.read(_TORCH_MEMBER)
            loaded = torch.compiler.load_cache_artifacts(blob)
            if loaded is None:
                raise ValueError("torch could not unpickle it")
            _restored_inductor_code = bool(getattr(loaded, "inductor_artifacts", None))
            use.restored_bytes = len(blob)
        use.restored_kernels = unpack_kernels(archive)
    except Exception as e:  # OSError, a damaged archive, or torch's / Triton's errors on a foreign entry
        why = f"({type(e).__name__}: {str(e)[:200]})"
        use.problem = (f"its Triton kernels were not restored {why}; they compiled cold" if use.restored_bytes
                       else f"not restored {why}; compiled cold and rewrote it")
        log.warning("compile cache %s: %s", path, use.problem)
    return use


def save_compile_cache(path: Path, use: CompileCacheUse) -> None:
    """Writes what this process compiled or loaded to `path`, atomically (a temp file renamed into
    place, so a concurrent worker or a killed run never leaves half a file). A failed write is
    recorded in `use` and logged: the run itself is unaffected."""
    artifacts = torch.compiler.save_cache_artifacts()
    kernels = compiled_kernels()
    if artifacts is None and not kernels:  # nothing was compiled (compile disabled, no Triton kernel)
        return
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # stored, not deflated: a CI cache step compresses
        if artifacts is not None:
            archive.writestr(_TORCH_MEMBER, artifacts[0])
        saved_kernels = pack_kernels(archive, kernels)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(buffer.getbuffer())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from a cache step run as another user
        os.replace(tmp, path)
        use.saved_bytes, use.saved_kernels = len(MAGIC) + len(buffer.getbuffer()), saved_kernels
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        use.problem = (use.problem + "; " if use.problem else "") + f"not saved ({type(e).__name__}: {e})"
        log.warning("compile cache %s %s", path, use.problem)


def compile_cache_counters() -> dict[str, int]:
    """Inductor's FX-graph and AOTAutograd cache hits, misses and bypasses in this process: whether
    a run's compile and startup times are cold or warm."""
    from torch._dynamo.utils import counters

    names = ("fxgraph_cache_hit", "fxgraph_cache_miss", "fxgraph_cache_bypass", "autograd_cache_hit", "autograd_cache_miss")
    groups = (counters["inductor"], counters["aot_autograd"])
    return {name: sum(int(g.get(name, 0)) for g in groups) for name in names}
