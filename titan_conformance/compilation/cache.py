"""A compile cache kept between runs: how a GPU runner starts fast without an Inductor cache dir.

A fresh runner compiles every region from scratch: on an H200, qwen3-0.6b's generator spends 5-7 s
in compile + capture of 7 graphs (one compile of its block, with the warm start, `warm_start.py`),
most of it Inductor and Triton. `torch.compiler` can hand out what it compiled or loaded in this process as one blob (FX
graphs, AOTAutograd entries, the Triton kernels Inductor generated, autotuning results) and take
such a blob back before anything compiles; a runner that keeps the file between jobs (e.g. an
actions/cache entry) started in 1.67 s (`benchmarks/startup.py`, H200). Kernels that a custom op
launches itself (our cache attention and sampler) are not in that blob: the file carries their
Triton cache entries beside it (`triton_kernels.py`), so a fresh runner compiles neither. The file
is a header line, a line with its tag, then a zip archive: `torch.bin` and `triton/<hash>/<file>`.
Entries are keyed by graph, config and version hashes, so a change that alters a graph misses and
compiles as if cold: the file can make a run faster, never different. For the same reason an
unusable file (corrupt, written by another torch, unreadable) is a warning and a cold start, never a
failed gate.

Loading the file runs code: torch unpickles its entries, and joins their keys onto its cache folders.
So the file is signed (an HMAC-SHA256 under the runner's secret `TC_COMPILE_CACHE_KEY`, which CI sets
from a secret that pull requests from forks do not get), and with that secret set a file whose tag
does not verify is refused, as is, always, one whose entries would be written outside their cache
folders. Both refusals happen before anything reaches torch or Triton; without the secret a file is
loaded, and the report says that it was not authenticated.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import torch

from titan_conformance.compilation.triton_kernels import (
    RefusedCacheFile, compiled_kernels, pack_kernels, read_kernels, unpack_kernels,
)
from titan_conformance.errors import ConformanceError

log = logging.getLogger(__name__)

MAGIC = b"titan_conformance compile cache 3\n"
"""The first line of every file this module writes (the format's version last). The second is the
file's tag: the hex HMAC-SHA256 of the header and the archive under `KEY_VARIABLE`'s secret, empty
when written without one. The zip archive follows."""

KEY_VARIABLE = "TC_COMPILE_CACHE_KEY"
"""The environment variable holding the runner's secret, which signs the file and verifies it."""

UNAUTHENTICATED = (
    f"loaded WITHOUT authentication: {KEY_VARIABLE} is not set, so this run loaded whatever the file "
    "held, and torch runs code from a compile cache as it loads it: whoever could write the file (say a "
    "pull request's job sharing the CI cache) could run code in this gate and change its verdict. Set "
    f"{KEY_VARIABLE} from a CI secret (pull requests from forks get none): the file is then signed, and "
    "a file not signed with that key is refused."
)
"""What `CompileCacheUse.unauthenticated` says when a file was loaded without the secret set."""

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
    authenticated: bool = False
    """Whether a file was restored whose tag verified under `TC_COMPILE_CACHE_KEY`."""
    unauthenticated: str = ""
    """`UNAUTHENTICATED` where a file was restored without the secret set (nothing verified what it
    held, and how to fix that); '' otherwise."""


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


def _secret() -> bytes | None:
    """The runner's secret; None where the variable is unset or empty (GitHub Actions gives a pull
    request from a fork an empty string for a secret)."""
    return os.environ.get(KEY_VARIABLE, "").encode() or None


def _tag(secret: bytes, archive: bytes) -> bytes:
    return hmac.new(secret, MAGIC + archive, hashlib.sha256).hexdigest().encode()


def _open_archive(path: Path, secret: bytes | None) -> zipfile.ZipFile:
    """The file's archive; with a secret, only once the file's tag verifies under it."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError("it was written by another version of titan_conformance" if data.startswith(_OURS)
                         else "it was not written by titan_conformance")
    tag, newline, archive = data[len(MAGIC):].partition(b"\n")
    if not newline:
        raise ValueError("it ends inside its header")
    if secret is not None and not hmac.compare_digest(tag, _tag(secret, archive)):
        raise RefusedCacheFile(
            f"it is not authenticated with {KEY_VARIABLE} ("
            + ("its HMAC-SHA256 tag does not match" if tag else "it carries no HMAC-SHA256 tag")
            + "): it was tampered with, written with another key, or written without one, and a compile "
            "cache holds code that loading it would run"
        )
    return zipfile.ZipFile(io.BytesIO(archive))


def _outside(key: str) -> str:
    """Why `key`, joined onto a cache folder, would name a path outside it ('' where it would not).
    Judged as a POSIX and a Windows path at once: with no root, no drive and no `..` component, no
    normalisation of the joined path leaves the folder."""
    path = PureWindowsPath(key)  # splits on `/` and `\` alike, and sees `C:` drives and UNC shares
    if "\0" in key:
        return "holds a NUL"
    if path.drive or path.root:
        return "is an absolute path or names a drive"
    return "has a '..' component" if ".." in path.parts else ""


def _check_torch_keys(blob: bytes) -> None:
    """Refuses a torch.compile blob holding an artifact whose key would write outside its cache folder
    (each kind's `populate_cache` joins its key onto a folder with os.path.join). The records are read
    with torch's own reader, as `load_cache_artifacts` reads them, while their contents stay bytes
    (torch unpickles those only as it populates its caches). A blob that cannot be read so, on a torch
    whose private reader moved too, is refused: what could not be inspected is never loaded."""
    try:
        from torch.compiler._cache import CacheArtifactManager, _deserialize_single_cache
        from torch.utils._appending_byte_serializer import AppendingByteSerializer

        CacheArtifactManager._ensure_cache_artifacts_registered()  # the reader builds each kind's class
        records = AppendingByteSerializer.to_list(blob, deserialize_fn=_deserialize_single_cache)
        keys = [(kind, artifact.key) for kind, artifacts in records for artifact in artifacts]
    except Exception as e:  # noqa: BLE001 -- a moved API or a damaged blob alike: it cannot be inspected
        raise RefusedCacheFile(
            "its torch.compile artifacts could not be inspected without loading them (torch "
            f"{torch.__version__}, {type(e).__name__}: {str(e)[:200]}), and what cannot be inspected is "
            "not loaded"
        ) from None
    for kind, key in keys:
        if why := _outside(key):
            raise RefusedCacheFile(
                f"the key of its torch {kind} artifact {key[:120]!r} {why}, so torch would write that entry "
                "outside its cache folder (a crafted file)"
            )


def restore_compile_cache(path: Path) -> CompileCacheUse:
    """Loads `path` into torch.compiler's caches and its Triton kernels into Triton's; a missing file
    is a cold start, an unusable or refused one a warning and a cold start (the save after startup
    replaces it). Every check runs before anything of the file reaches torch or Triton."""
    global _restored_inductor_code
    _restored_inductor_code = False
    use = CompileCacheUse()
    if not path.exists():
        return use
    secret = _secret()
    try:
        archive = _open_archive(path, secret)
        kernels = read_kernels(archive)
        blob = archive.read(_TORCH_MEMBER) if _TORCH_MEMBER in archive.namelist() else None
        if blob is not None:
            _check_torch_keys(blob)
        if blob is not None or kernels:  # from here on the file's contents reach torch and Triton
            use.authenticated = secret is not None
            use.unauthenticated = "" if secret else UNAUTHENTICATED
        if blob is not None:
            loaded = torch.compiler.load_cache_artifacts(blob)
            if loaded is None:
                raise ValueError("torch could not unpickle it")
            _restored_inductor_code = bool(getattr(loaded, "inductor_artifacts", None))
            use.restored_bytes = len(blob)
        use.restored_kernels = unpack_kernels(kernels)
    except RefusedCacheFile as e:
        use.problem = (f"not loaded: {e}. Nothing of it reached torch or Triton; the run compiled cold, and "
                       "the save after startup rewrites the file" + (", signed." if secret else "."))
    except Exception as e:  # OSError, a damaged archive, or torch's / Triton's errors on a foreign entry
        why = f"({type(e).__name__}: {str(e)[:200]})"
        use.problem = (f"its Triton kernels were not restored {why}; they compiled cold" if use.restored_bytes
                       else f"not restored {why}; compiled cold and rewrote it")
    if use.problem:
        log.warning("compile cache %s: %s", path, use.problem)
    return use


def save_compile_cache(path: Path, use: CompileCacheUse) -> None:
    """Writes what this process compiled or loaded to `path`, atomically (a temp file renamed into
    place, so a concurrent worker or a killed run never leaves half a file), signed where
    `TC_COMPILE_CACHE_KEY` is set. A failed write is recorded in `use` and logged: the run itself is
    unaffected."""
    artifacts = torch.compiler.save_cache_artifacts()
    kernels = compiled_kernels()
    if artifacts is None and not kernels:  # nothing was compiled (compile disabled, no Triton kernel)
        return
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # stored, not deflated: a CI cache step compresses
        if artifacts is not None:
            archive.writestr(_TORCH_MEMBER, artifacts[0])
        saved_kernels = pack_kernels(archive, kernels)
    secret = _secret()
    header = MAGIC + (_tag(secret, buffer.getvalue()) if secret else b"") + b"\n"
    tmp = None
    path = Path(os.path.realpath(path))  # through a symlink (a CI cache's), so the link stays a link
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(buffer.getbuffer())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from a cache step run as another user
        os.replace(tmp, path)
        use.saved_bytes, use.saved_kernels = len(header) + len(buffer.getbuffer()), saved_kernels
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
