"""FULL CUDA graphs of the native generator's decode step: one per capture size.

The decode step (every compiled block, the final norm, lm_head and sampling) is one shape-static
function of (tokens, positions, noise, sampling knobs, cache slots), captured at each size into one
shared memory pool; a batch is padded up to the next size, its padded rows writing their keys and
values to the scratch slot (`NativeGenerator.fill_graph_inputs`). Each size is captured once at
startup; `NativeGenerator.captures` counts every capture, so a re-capture mid-run shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from titan_conformance.generator.sampling import sampling_tensors


@dataclass
class CapturedGraph:
    """One FULL decode graph and the static buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    """tokens [N, 1], positions [N, 1], noise [N, V], then `sampling.sampling_tensors`' divisor,
    noise scale, top_p and top_k [], cache slots [1, N]."""
    outputs: tuple[torch.Tensor, ...]
    """tokens [N], token logprobs [N], logits [N, V]."""
    seconds: float
    memory_bytes: int


@dataclass
class CaptureReport:
    sizes: list[int] = field(default_factory=list)
    seconds: dict[int, float] = field(default_factory=dict)
    memory_bytes: dict[int, int] = field(default_factory=dict)


def static_inputs(gen, size: int) -> tuple[torch.Tensor, ...]:
    """The static input buffers of a graph of `size` rows of `gen` (`CapturedGraph.inputs`)."""
    device = gen.device
    return (
        torch.zeros(size, 1, dtype=torch.long, device=device),
        torch.zeros(size, 1, dtype=torch.long, device=device),
        torch.zeros(size, gen.vocab_size, dtype=torch.float32, device=device),
        *sampling_tensors(gen.config.sampling, device),
        torch.full((1, size), gen.scratch_slot, dtype=torch.long, device=device),
    )


@torch.no_grad()
def capture_graphs(gen) -> CaptureReport:
    """Captures one FULL decode graph per capture size of `gen` (a NativeGenerator), largest first
    into one shared memory pool (smaller graphs reuse the largest one's memory)."""
    report = CaptureReport()
    sizes = gen.config.captured_sizes
    if not sizes:
        return report
    device, pool = gen.device, torch.cuda.graph_pool_handle()
    for size in sorted(sizes, reverse=True):
        inputs = static_inputs(gen, size)
        torch.cuda.synchronize()
        start, mem_before = time.perf_counter(), torch.cuda.memory_allocated(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: compiles this batch class, allocates workspaces
            for _ in range(2):
                gen.decode_step(*inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = gen.decode_step(*inputs)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        memory = torch.cuda.memory_allocated(device) - mem_before
        gen.graphs[size] = CapturedGraph(graph, inputs, outputs, seconds, memory)
        gen.captures[size] += 1
        report.seconds[size], report.memory_bytes[size] = seconds, memory
    report.sizes = sorted(gen.graphs)
    return report
