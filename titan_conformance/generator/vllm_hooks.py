"""What the vLLM generator asks of vLLM's in-process engine worker, through `LLM.collective_rpc`.

Each function takes the worker (vLLM calls it as `fn(worker, *args)`). The graph hooks are written
against vLLM's V2 GPU model runner (`vllm/v1/worker/gpu/model_runner.py`, vLLM's default for a dense
model since 0.26), whose `cudagraph_manager` holds the captured FULL graphs (`graphs`, keyed by
batch descriptor) and picks, per forward, the graph a batch replays (`dispatch`). A runner without
one (vLLM's CPU runner, the V1 GPU runner) reports no graphs and no dispatches.
"""

from __future__ import annotations

DISPATCH_LOG = "titan_conformance_dispatches"
"""Attribute of the cudagraph manager that holds (num_reqs, uniform_token_count, graph mode) per forward."""
EAGER = "titan_conformance_eager"
"""Attribute of the cudagraph manager: while true, every forward dispatches to no graph."""


def _manager(worker):
    return getattr(worker.model_runner, "cudagraph_manager", None)


def engine_view(worker) -> dict:
    """What vLLM resolved: its model runner, attention backend(s), cudagraph mode, capture sizes, and
    the FULL graphs it holds as (num_tokens, num_reqs)."""
    runner, config = worker.model_runner, worker.vllm_config.compilation_config
    manager = _manager(worker)
    mode = manager.cudagraph_mode if manager is not None else config.cudagraph_mode
    backends = sorted({g.backend.get_name() for groups in getattr(runner, "attn_groups", []) for g in groups})
    view = {
        "model_runner": f"{type(runner).__module__}.{type(runner).__qualname__}",
        "attention_backends": backends,
        "cudagraph_mode": getattr(mode, "name", str(mode)),
        "capture_sizes": sorted(config.cudagraph_capture_sizes or []),
        "full_graphs": sorted((d.num_tokens, d.num_reqs) for d in getattr(manager, "graphs", {})
                              if d.cg_mode.name == "FULL"),
        "startup_marks": dict(runner.get_model().startup_marks),
    }
    if "FLASH_ATTN" in backends:
        from vllm.v1.attention.backends.fa_utils import get_flash_attn_version

        view["flash_attn_version"] = get_flash_attn_version()
    return view


def log_dispatches(worker) -> bool:
    """Records every forward's dispatch decision on the manager (`DISPATCH_LOG`), and dispatches to
    no graph while `EAGER` is set (the unpadded batch, as vLLM runs one above its capture sizes);
    False where the runner has no cudagraph manager to ask."""
    manager = _manager(worker)
    if manager is None:
        return False
    log: list[tuple[int, int | None, str]] = []
    dispatch = manager.dispatch
    setattr(manager, EAGER, False)

    def logged(num_reqs, num_tokens, uniform_token_count, num_active_loras):
        desc = dispatch(num_reqs, num_tokens, uniform_token_count, num_active_loras)
        if getattr(manager, EAGER):
            from vllm.config.compilation import CUDAGraphMode

            desc = type(desc)(cg_mode=CUDAGraphMode.NONE, num_tokens=num_tokens, num_reqs=num_reqs,
                              num_active_loras=desc.num_active_loras)
        log.append((num_reqs, uniform_token_count, desc.cg_mode.name))
        return desc

    manager.dispatch = logged  # an instance attribute: the runner calls manager.dispatch(...)
    setattr(manager, DISPATCH_LOG, log)
    return True


def set_eager_dispatch(worker, eager: bool) -> None:
    setattr(_manager(worker), EAGER, eager)


def take_dispatches(worker) -> list[tuple[int, int | None, str]]:
    """The dispatches logged since the last call (emptied)."""
    log = getattr(_manager(worker), DISPATCH_LOG, [])
    out = list(log)
    log.clear()
    return out


def set_logits_spec(worker, spec) -> None:
    """Makes the model's `compute_logits` return the logits of a `SamplingSpec`'s semantics (tempered
    in fp32, and truncated by top-k/top-p where it reports processed logprobs; None: as the model
    computes them), so that vLLM's prompt logprobs, which skip the sampling processors, and its
    raw_logprobs, which are untempered, follow the profile."""
    worker.model_runner.get_model().logits_spec = spec


def time_graph_replay(worker, batch: int, repeats: int) -> float | None:
    """Median seconds of one replay of the FULL graph that a decode step of `batch` requests
    dispatches to (None where it would run without one); the first replay is not timed. The graph
    replays what its input buffers hold, the last step's: it writes KV only where that step did,
    for requests that have finished."""
    import statistics
    import time

    import torch

    manager = _manager(worker)
    desc = manager.dispatch(batch, batch, 1, 0)
    if desc.cg_mode.name != "FULL":
        return None
    seconds = []
    for _ in range(repeats + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        manager.run_fullgraph(desc)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])
