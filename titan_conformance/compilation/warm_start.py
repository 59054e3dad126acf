"""Cold-start work that need not wait for the first compile: started at build, while weights load.

A cold generator on CUDA pays, before its first graph is compiled, for things that do not depend on
the graph: Inductor's pool of compile workers (a subprocess per core of the worker's share, each
importing torch: 2.7 s for an H200 machine's 16 before they take work; until then Inductor compiles
its kernels in the main process, one after the other), the import of Inductor's compiler (0.7 s),
and the JIT compiles of our own Triton kernels, which Inductor launches but does not build (cache
attention 1.1 s, the sampler's two kernels 1.0 s). `start_warm_start` begins all of it at build
time: the pool in the background as Inductor would at its first compile, the import and the kernels
on a thread of their own (the weight load that follows spends its time in CUDA and file reads, which
release the GIL). The generator's first forward waits for the thread (`WarmStart.wait`; the GRPO
system waits before its trainer compiles), so whatever is left of it counts in the compile phase.
With the compiled graphs restored from a compile cache (`cache.py`) there is nothing for the pool to
do, so it is not started early (a graph that misses starts it at its first kernel, as without us);
the cache also holds our kernels' binaries, so their warm-ups load rather than compile.

A warm-up that fails is a warning, not an error: the first compile or launch then does that work,
as it would without a warm start.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from functools import partial
from typing import Callable

import torch

from titan_conformance.compilation.cache import restored_inductor_code


class WarmStart:
    """The background half of a warm start: runs `warm_ups` on a thread of its own (on CUDA with
    `device` current and a stream of its own, ordered after the work queued so far, such as the
    zero-fill of the KV cache the attention warm-up reads)."""

    def __init__(self, device: torch.device, warm_ups: list[Callable[[], None]]) -> None:
        if device.type == "cuda" and device.index is None:  # the current device is per thread
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, args=(warm_ups,), name="warm-start", daemon=True)
        self._thread.start()

    def _run(self, warm_ups: list[Callable[[], None]]) -> None:
        try:
            stream = None
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.default_stream(self.device))
            with torch.cuda.stream(stream):
                for warm_up in warm_ups:
                    try:
                        warm_up()
                    except Exception as e:  # whatever a launch or import raises, the real one raises again
                        self.failures.append(f"{_name(warm_up)}: {type(e).__name__}: {e}")
            if stream is not None:
                stream.synchronize()  # a kernel fault surfaces here, and is reported like the others
        except Exception as e:
            self.failures.append(f"the warm-start thread: {type(e).__name__}: {e}")

    def wait(self) -> None:
        """Blocks until the warm-ups are done; warns once about any that failed."""
        self._thread.join()
        if self.failures:
            warnings.warn(
                f"Warm start: {'; '.join(self.failures)}. The first compile or launch does that work instead.",
                stacklevel=2,
            )
            self.failures = []


def _name(fn: Callable) -> str:
    fn = getattr(fn, "func", fn)  # functools.partial
    return getattr(fn, "__qualname__", repr(fn))


def warm_inductor_workers() -> None:
    """Starts Inductor's compile-worker pool now rather than at the first compile. Private torch API:
    when a torch release lacks it, or starting fails, Inductor starts the pool itself as before."""
    try:
        from torch._inductor.async_compile import maybe_warm_pool

        maybe_warm_pool()
    except Exception as e:  # ImportError on another torch; OSError and the like from spawning
        warnings.warn(f"Warm start: Inductor's workers did not start early ({type(e).__name__}: {e}).", stacklevel=2)


def start_warm_start(
    device: torch.device, backend: str | None, warm_ups: list[Callable[[], None]]
) -> WarmStart | None:
    """Runs `warm_ups` (each launches one of our Triton kernels on small inputs) in the background;
    with `backend` "inductor" also starts Inductor's workers and imports its compiler. None off
    CUDA, where none of it applies. `backend`: None when nothing is compiled.

    Call it after the model's blocks are wrapped by torch.compile (that imports Dynamo's backends,
    much of what Inductor's compiler imports), and wait for it before anything on the main thread
    compiles or imports torch._inductor: two threads importing one circular package can see it
    half-initialized."""
    if device.type != "cuda":
        return None
    if backend == "inductor":
        # A restored compile cache holds the compiled graphs: the pool would take cores from the
        # weight load and warm-up for nothing (a graph that misses still compiles, its pool started
        # by Inductor at the first kernel).
        if not restored_inductor_code():
            warm_inductor_workers()
        warm_ups = [partial(importlib.import_module, "torch._inductor.compile_fx"), *warm_ups]
    return WarmStart(device, warm_ups)
