"""Which GPUs and cores an xdist worker of the suite takes, decided before CUDA initializes."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import TYPE_CHECKING, Callable

from titan_conformance.errors import ConformanceError

if TYPE_CHECKING:
    import torch


def visible_gpus() -> list[str]:
    """GPU ids this process may use, read without initializing CUDA."""
    if (env := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [d for d in env.split(",") if d.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def worker_gpu_count() -> int:
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None or shutil.which("nvidia-smi"):
        return len(visible_gpus())
    return 0


def worker_gpus(gpus: list[str], worker: str, count: int) -> list[str]:
    """The GPUs of xdist worker `worker` (gw<i>) of `count`: an equal share, wrapping around when
    workers outnumber GPUs (then workers share one)."""
    index = int(worker.removeprefix("gw"))
    per_worker = max(1, len(gpus) // count)
    start = (index * per_worker) % len(gpus)
    return gpus[start : start + per_worker]


def pin_worker_gpus(worker: str, count: int, device_option: str, session_gpus: list[str] | None = None) -> list[str]:
    """Gives xdist worker `worker` of `count` its own GPU(s) (within any CUDA_VISIBLE_DEVICES
    already set). `session_gpus`: the GPUs its controller found (each worker asking nvidia-smi
    again would add its start-up to every worker's). Returns the GPUs the whole session may use."""
    if device_option == "cpu":
        return []
    if gpus := (visible_gpus() if session_gpus is None else session_gpus):
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(worker_gpus(gpus, worker, count))
    return gpus


def gpu_sharing(workers: int, runnable_variants: int, gpus: int) -> str | None:
    """Why workers share a GPU (more of them run variants at once than there are GPUs), or None."""
    at_once, gpus = min(workers, runnable_variants), max(gpus, 1)
    if at_once <= gpus:
        return None
    return (f"{at_once} workers run variants at once on {gpus} GPU(s), so each step's time includes the others'; "
            "the in-run ratio checks judge speed here (run with -n <= the GPU count to judge the budgets)")


def share_cpu_threads(count: int) -> Callable[[], None] | None:
    """Each of `count` xdist workers takes its share of the cores, for torch's threads and for
    Inductor's pool of compile subprocesses: n workers each running as many threads as there are
    cores oversubscribe them, and small ops then spin and wait more than they compute (a generate
    step 5x its bare step on 2 contended cores); n pools of one subprocess per core each import torch
    at start (seconds of CPU each) and contend for the cores while weights load. A pool size the user
    set (TORCHINDUCTOR_COMPILE_THREADS) stays. Returns what puts the settings back (None when it
    changed nothing)."""
    if count <= 1:
        return None
    import torch
    import torch._inductor.config as inductor

    share = max(1, (os.cpu_count() or 1) // count)
    threads, compile_threads = torch.get_num_threads(), inductor.compile_threads
    torch.set_num_threads(share)
    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        inductor.compile_threads = share  # 1: Inductor compiles in the worker, with no pool

    def restore() -> None:
        torch.set_num_threads(threads)
        inductor.compile_threads = compile_threads

    return restore


def resolve_device(name: str) -> "torch.device":
    """The torch device `--tc-device` names: cpu, cuda, or auto (cuda where torch sees one)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConformanceError(
            "--device cuda was asked for, but torch sees no CUDA device (torch "
            f"{torch.__version__}); run on a GPU runner with a CUDA build of torch, or use --device cpu."
        )
    if name not in ("cpu", "cuda"):
        raise ConformanceError(f"Unknown device {name!r}; use cpu, cuda or auto.")
    return torch.device(name)
