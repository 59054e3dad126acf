"""Run a function on every rank of a fresh process group, in processes of its own.

Each call spawns `world_size` processes (multiprocessing's spawn context: no forked torch state),
joins them into one process group (gloo on CPU, NCCL on CUDA) through a FileStore in a temporary
directory -- no TCP port to pick, so concurrent calls (pytest-xdist workers) never collide -- runs
`fn(rank, world_size, *args)` on each, and returns every rank's result to the caller. The process
group is destroyed in every rank whatever happens, and a rank that fails or hangs takes the whole
group down with its traceback in the error.
"""

from __future__ import annotations

import os
import pickle
import queue
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from titan_conformance.errors import ConformanceError


class RankError(ConformanceError):
    """A rank raised, died or timed out."""


@dataclass
class LaunchTiming:
    """Seconds of one `run_ranks` call, as seen by the parent."""

    total: float = 0.0
    """Spawn to last result."""
    ranks: list[dict[str, float]] | None = None
    """Per rank: `start` (interpreter and imports up to `fn`'s module, from spawn), `init` (process
    group creation), `fn`, `destroy`."""


def _rank_main(
    rank: int, world_size: int, backend: str, store_path: str, threads: int,
    fn: Callable[..., Any], args: tuple, results: Any, spawned_at: float,
) -> None:
    times = {"start": time.time() - spawned_at}
    try:
        torch.set_num_threads(threads)
        if backend == "nccl":
            torch.cuda.set_device(rank)
        t = time.perf_counter()
        dist.init_process_group(
            backend, init_method=f"file://{store_path}", rank=rank, world_size=world_size
        )
        times["init"] = time.perf_counter() - t
        try:
            t = time.perf_counter()
            out = fn(rank, world_size, *args)
            times["fn"] = time.perf_counter() - t
        finally:
            t = time.perf_counter()
            dist.destroy_process_group()
            times["destroy"] = time.perf_counter() - t
        # Plain pickle bytes: the queue's pickler would share tensors through file descriptors,
        # which die with this process before the parent reads them.
        results.put((rank, "ok", pickle.dumps(out), times))
    except BaseException as e:  # noqa: BLE001 -- the parent reports it with the rank's traceback
        results.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}", times))


_ERROR_GRACE_S = 3.0
"""After a rank fails, how long to wait for the others' errors before killing them."""


def require_process_group(tp: int, where: str) -> None:
    """A system at parallel.tp = `tp` is built on every rank of a process group of `tp` ranks."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world != tp:
        raise ConformanceError(
            f"{where} asks for parallel.tp = {tp}: build it on every rank of a process group of "
            f"{tp} ranks (titan_conformance.parallel.run_ranks does; this process has "
            f"{'no process group' if world == 1 else f'{world} ranks'})."
        )


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple = (),
    backend: str | None = None,
    timeout: float = 300.0,
    timing: LaunchTiming | None = None,
) -> list[Any]:
    """`[fn(0, world_size, *args), ..., fn(world_size - 1, ...)]`, each run in its own process of
    one process group. `fn` and `args` must pickle (a module-level function). On CPU each rank gets
    an equal share of the cores as torch threads."""
    backend = backend or default_backend()
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ConformanceError(
            f"TP degree {world_size} needs {world_size} CUDA devices; torch sees {torch.cuda.device_count()}."
        )
    threads = max(1, (os.cpu_count() or 1) // world_size) if backend == "gloo" else 1
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tc-pg-") as tmp:
        store = os.path.join(tmp, "store")
        procs = [
            ctx.Process(
                target=_rank_main,
                args=(rank, world_size, backend, store, threads, fn, args, results, time.time()),
                name=f"tc-rank{rank}",
                daemon=True,
            )
            for rank in range(world_size)
        ]
        for p in procs:
            p.start()
        outs: dict[int, tuple] = {}
        errors: dict[int, str] = {}
        deadline, grace = time.monotonic() + timeout, float("inf")
        failure = None
        try:
            while len(outs) < world_size:
                if failure is not None and time.monotonic() > grace:
                    break  # the others are stuck in a collective with the failed rank
                try:
                    rank, status, payload, times = results.get(timeout=0.2)
                except queue.Empty:
                    if failure is not None:
                        continue
                    if time.monotonic() > deadline:
                        failure = f"timed out after {timeout:.0f} s with ranks {sorted(set(range(world_size)) - set(outs))} unfinished"
                    elif dead := [p for p in procs if p.exitcode not in (None, 0)]:
                        failure = ", ".join(f"{p.name} died with exit code {p.exitcode}" for p in dead)
                    if failure is not None:
                        break
                    continue
                outs[rank] = (pickle.loads(payload) if status == "ok" else payload, times)
                if status == "error":
                    errors[rank] = payload
                    if failure is None:  # wait briefly for the other ranks' errors: one is the cause
                        failure, grace = "error", time.monotonic() + _ERROR_GRACE_S
            if errors:
                failure = "; ".join(f"rank {r} raised {errors[r].splitlines()[0]}" for r in sorted(errors))
                failure += "".join(f"\n\n--- rank {r} ---\n{errors[r]}" for r in sorted(errors))
        finally:
            for p in procs:
                p.join(timeout=10.0 if failure is None else 0.5)
                if p.is_alive():
                    p.kill()
                    p.join()
            results.close()
    if failure is not None:
        raise RankError(f"TP run of {getattr(fn, '__name__', fn)} on {world_size} ranks ({backend}) failed: {failure}")
    if timing is not None:
        timing.total = time.perf_counter() - start
        timing.ranks = [outs[r][1] for r in range(world_size)]
    return [outs[r][0] for r in range(world_size)]
