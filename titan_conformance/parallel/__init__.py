"""Tensor parallelism: TP plans for the shared Qwen3 model, the AsyncCollectiveTensor unwrap option,
and a launcher that runs a function on every rank of a fresh process group."""

from titan_conformance.parallel.launch import RankError, run_ranks
from titan_conformance.parallel.tp_plan import apply_tp, tp_mesh
from titan_conformance.parallel.unwrap import unwrap_async_inputs

__all__ = ["RankError", "apply_tp", "run_ranks", "tp_mesh", "unwrap_async_inputs"]
