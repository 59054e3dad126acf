"""Our own Triton kernels' binaries, carried in the compile cache file beside torch.compile's blob.

torch.compiler's cache artifacts hold the kernels Inductor generates, not the ones a custom op
launches itself (cache attention, the sampler: `model/cache_attention_kernel.py`,
`generator/sampling_kernel.py`). Triton compiles those into its own cache directory, which a
fresh runner does not have: with every Inductor graph restored, the 0.6B fp32 variant still spent its
startup compiling four kernels (LLVM and ptxas on fp32 `tl.dot`s; H100, 2026-12-07). So the file
also carries the entries of every Triton kernel this process compiled or loaded through a
`triton.jit` function, written back through Triton's cache manager before anything launches. An entry
is keyed by Triton's own hash (source, options, target, Triton version), so one that does not fit
this machine is never looked up: it can make a start faster, never different.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Iterator

PREFIX = "triton/"
"""Where the entries lie in the cache file's archive: `triton/<hash>/<file name>`."""


def _jit_functions() -> Iterator[object]:
    """Every `triton.jit` function reachable from a loaded module (autotuner and heuristics wrappers
    unwrapped); kernels defined by a system under test count as much as ours."""
    try:
        from triton.runtime.jit import JITFunction, KernelInterface
    except ImportError:  # a CPU build without Triton launches no Triton kernel
        return
    seen: set[int] = set()
    for module in list(sys.modules.values()):
        try:
            values = list(vars(module).values())
        except Exception:  # noqa: BLE001 -- sys.modules may hold odd objects; they hold no kernel of ours
            continue
        for value in values:
            # type(), not isinstance(): a module's deprecated objects warn when asked their __class__
            for _ in range(4):  # Autotuner / Heuristics (KernelInterfaces) hold the function they tune
                if not issubclass(type(value), KernelInterface) or issubclass(type(value), JITFunction):
                    break
                value = getattr(value, "fn", None)
            if issubclass(type(value), JITFunction) and id(value) not in seen:
                seen.add(id(value))
                yield value


def compiled_kernels() -> dict[str, dict[str, str]]:
    """Triton's hash -> {file name: path in Triton's cache} of each kernel compiled or loaded here."""
    kernels: dict[str, dict[str, str]] = {}
    for fn in _jit_functions():
        for per_device in getattr(fn, "device_caches", {}).values():
            # (kernel cache, ...) on Triton 3.x: specialization key -> compiled kernel; another
            # layout carries nothing (its kernels compile as on a fresh runner)
            cache = per_device[0] if isinstance(per_device, (tuple, list)) and per_device else None
            for kernel in cache.values() if isinstance(cache, dict) else ():
                group = getattr(kernel, "metadata_group", None)
                if group and getattr(kernel, "hash", None):
                    kernels[kernel.hash] = dict(group)
    return kernels


def pack_kernels(archive: zipfile.ZipFile, kernels: dict[str, dict[str, str]]) -> int:
    """Writes each kernel's files into `archive`; returns how many kernels went in (one whose files
    left Triton's cache meanwhile is left out)."""
    packed = 0
    for key, group in kernels.items():
        try:
            files = {name: Path(path).read_bytes() for name, path in group.items()}
        except OSError:
            continue
        for name, data in files.items():
            archive.writestr(f"{PREFIX}{key}/{name}", data)
        packed += 1
    return packed


class RefusedCacheFile(Exception):
    """A compile-cache file that must not reach torch or Triton; the message says why. It lives here,
    beside the first check that raises it, so that `cache.py` (which imports this module) raises it too."""


def _plain(name: str) -> bool:
    # one path component that cannot lead elsewhere: no separator, no `..`, no drive (`C:`), no NUL
    return bool(name) and not name.startswith(".") and not any(c in name for c in "/\\:\0")


def read_kernels(archive: zipfile.ZipFile) -> dict[str, dict[str, bytes]]:
    """The archive's kernels: Triton's hash -> {file name: contents}. A member under `triton/` other
    than `triton/<hash>/<file name>` with plain names refuses the whole file: Triton's cache manager
    joins both onto its folder, so such a member (only a crafted file has one) could plant a file,
    a `.so` that Triton loads say, anywhere."""
    kernels: dict[str, dict[str, bytes]] = {}
    for name in archive.namelist():
        if name.startswith(PREFIX):
            key, _, file_name = name[len(PREFIX):].partition("/")
            if not (_plain(key) and _plain(file_name)):
                raise RefusedCacheFile(
                    f"its Triton member {name[:120]!r} is not triton/<hash>/<file name> with plain names, so "
                    "Triton's cache manager could write it outside its cache folder (a crafted file)"
                )
            kernels.setdefault(key, {})[file_name] = archive.read(name)
    return kernels


def unpack_kernels(kernels: dict[str, dict[str, bytes]]) -> int:
    """Puts kernels (from `read_kernels`) into Triton's cache (where this process's Triton looks them
    up); returns how many it put there. Entries already present are left as they are."""
    if not kernels:
        return 0
    from triton.runtime.cache import get_cache_manager

    restored = 0
    for key, files in kernels.items():
        # Triton finds a kernel by its metadata file's group: the files' paths, recorded last
        metadata = next((n for n in files if n.endswith(".json")), None)
        manager = get_cache_manager(key)
        if metadata is None or manager.get_group(metadata) is not None:
            continue
        paths = {n: manager.put(data, n, binary=True) for n, data in files.items()}
        manager.put_group(metadata, paths)
        restored += 1
    return restored
