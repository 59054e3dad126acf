"""Startup and step-time benchmark of the GRPO system, every ratio measured in one run.

    python benchmarks/bench_gpu.py [--suite qwen3-0.6b] [--out DIR] [--skip compile,capture]

Rows: regional (per-block) vs whole-model compile, cold (Inductor caches off); 7 FULL decode graphs
from our capture-size policy (max_num_seqs = 8 x 5 = 40) vs the 35 sizes vLLM's default policy
captures at max_num_seqs = 128; FULL-graph vs compiled vs eager decode at batch 40; the decode
attention (our Triton kernel) vs its PyTorch path (gathered rows, SDPA with a mask); the generator's fused q/k/v
and gate/up GEMMs vs 7 GEMMs per block; our sampling kernels vs PyTorch's ops; and the GRPO
system's startup and step time by phase. Decode steps run with each row at its own position, spread over the cache as in
a generation (a kernel that reads only the visible slots must not be timed at position 8). Prints
one table; writes JSON + Markdown to --out. `--skip` leaves out the slow compile and capture
comparisons (the whole-model compile alone takes minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")  # measure compile cold, as a fresh runner does
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")

import torch  # noqa: E402

from titan_conformance.compilation import CompileConfig, CompileLedger, apply_regional_compile  # noqa: E402
from titan_conformance.profile.cudagraph import vllm_default_capture_sizes  # noqa: E402
from titan_conformance.generator.base import GeneratorConfig  # noqa: E402
from titan_conformance.generator.native import NativeGenerator  # noqa: E402
from titan_conformance.generator.qwen3 import qwen3_generator  # noqa: E402
from titan_conformance.profile import CudagraphMode  # noqa: E402
from titan_conformance.generator.sampling import sampling_tensors  # noqa: E402
from titan_conformance.model import ModelArgs, Qwen3Model  # noqa: E402
from titan_conformance.generator import sampling  # noqa: E402
from titan_conformance.model.attention import KVCacheAttention  # noqa: E402
from titan_conformance.model.cache_attention import sdpa_cache_attention  # noqa: E402
from titan_conformance.providers.grpo import STARTUP_PHASES
from titan_conformance.providers.reference import build_system  # noqa: E402
from titan_conformance.profile import load_profile  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def compile_time(args: ModelArgs, dtype, device, regional: bool, batch: int, seq: int) -> float:
    """First forward + backward of a trainer batch: dominated by compilation."""
    torch._dynamo.reset()
    with torch.device(device):
        model = Qwen3Model(args).to(dtype)
    if regional:
        apply_regional_compile(model, CompileConfig(), CompileLedger(), role=f"bench{time.monotonic_ns()}")
        run = model
    else:
        run = torch.compile(model, fullgraph=True, dynamic=True)
    tokens = torch.randint(0, args.vocab_size, (batch, seq), device=device)
    return seconds(lambda: run(tokens).float().mean().backward())


def capture_time(args, dtype, device, max_num_seqs: int, sizes: list[int]) -> tuple[float, int]:
    torch._dynamo.reset()
    config = GeneratorConfig(max_num_seqs=max_num_seqs, max_model_len=160, device=device, cudagraph_mode=CudagraphMode.FULL,
                             capture_sizes=tuple(sizes))
    gen = qwen3_generator(args, config=config, compile_config=CompileConfig(), ledger=CompileLedger(), dtype=dtype)
    gen.model.init_weights(0)
    sync()
    start = time.perf_counter()
    report = gen.capture()
    sync()
    total = time.perf_counter() - start
    del gen
    torch.cuda.empty_cache()
    return total, len(report.sizes)


class SdpaKVCacheAttention(KVCacheAttention):
    """Baseline: the cache attention's PyTorch path (each query's row gathered, one SDPA over the
    query heads grouped by KV head, with a mask) traced into the block, not our Triton kernel."""

    attend = staticmethod(sdpa_cache_attention)


def baseline_generator(
    args, dtype, device, profile, attention: type | None = None, fused: bool = True, torch_sampler: bool = False
) -> NativeGenerator:
    """A generator with one FULL graph at max_num_seqs, its cache attention `attention`'s (None:
    ours), separate q/k/v and gate/up GEMMs unless `fused`, and PyTorch's sampling ops captured
    instead of our kernels when `torch_sampler`."""
    config = GeneratorConfig(max_num_seqs=profile.max_num_seqs, max_model_len=profile.generator.max_model_len,
                             device=device, cudagraph_mode=CudagraphMode.FULL, capture_sizes=(profile.max_num_seqs,))
    gen = qwen3_generator(args, config=config, compile_config=CompileConfig(), ledger=CompileLedger(), dtype=dtype, stacked=fused)
    gen.wait_warm_start()  # before the attention class and the sampler are swapped below
    if attention is not None:
        for block in gen.model.layers:
            block.self_attn.inner_attention.__class__ = attention
    gen.model.init_weights(0)
    kernel = sampling.sampling_kernel
    sampling.sampling_kernel = None if torch_sampler else kernel
    try:
        gen.capture()
    finally:
        sampling.sampling_kernel = kernel
    return gen


def decode_ms(gen: NativeGenerator, batch: int, how: str, iters: int = 50) -> float:
    vocab = gen.vocab_size
    spread = torch.Generator().manual_seed(0)
    args = (
        torch.zeros(batch, 1, dtype=torch.long, device=gen.device),
        torch.randint(8, gen.max_model_len, (batch, 1), generator=spread).to(gen.device),
        torch.zeros(batch, vocab, device=gen.device),
        *sampling_tensors(gen.config.sampling, gen.device),
    )

    if how == "replay":  # the graph alone, back to back: no input copies, no host sync per step
        graph = gen.fill_graph_inputs(batch, *args[:3], args[3:]).graph
        for _ in range(3):
            graph.replay()
        return 1000 * seconds(lambda: [graph.replay() for _ in range(iters)]) / iters

    def step():
        if how == "eager":
            with torch.compiler.set_stance("force_eager"):
                gen.decode_step(*args)
        else:
            gen.run_decode(*args[:3], args[3:], use_graph=how == "graph")

    with torch.no_grad():
        for _ in range(3):
            step()
        times = [seconds(step) for _ in range(iters)]
    return 1000 * statistics.median(times)


def kernel_table(gen: NativeGenerator, batch: int, path: Path) -> None:
    """Where one graph replay's time goes: the CUDA kernels it ran, by total time."""
    graph = gen.graphs[batch].graph
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            graph.replay()
        sync()
    path.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="qwen3-0.6b")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/results")))
    parser.add_argument("--skip", default="", help="comma-separated: compile, capture")
    opts = parser.parse_args()
    skip = set(filter(None, opts.skip.split(",")))
    opts.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    profile = load_profile(opts.suite)
    args = ModelArgs.from_hf_config(profile.model.config)
    dtype = getattr(torch, profile.model.dtype)
    rows: list[tuple[str, str, str, str]] = []

    results: dict = {}
    if "compile" not in skip:
        regional = compile_time(args, dtype, device, True, 40, 109)
        whole = compile_time(args, dtype, device, False, 40, 109)
        rows.append(("compile (first fwd+bwd, cold)", f"regional {regional:.1f} s", f"whole-model {whole:.1f} s", f"{whole / regional:.2f}x"))
        results["compile_s"] = {"regional": regional, "whole": whole}

    if "capture" not in skip:
        ours, n_ours = capture_time(args, dtype, device, profile.max_num_seqs, profile.capture_sizes)
        vllm, n_vllm = capture_time(args, dtype, device, 128, vllm_default_capture_sizes(128))
        rows.append(("FULL capture (incl. per-size warm-up)", f"{n_ours} sizes {ours:.1f} s", f"{n_vllm} sizes {vllm:.1f} s", f"{vllm / ours:.2f}x"))
        results["capture_s"] = {"ours": ours, "vllm_default": vllm}

    torch._dynamo.reset()
    bsz = profile.max_num_seqs
    baselines = {}
    variants = {
        "sdpa": {"attention": SdpaKVCacheAttention},
        "unfused": {"fused": False},
        "torch_sampler": {"torch_sampler": True},
    }
    for name, kwargs in variants.items():
        baseline = baseline_generator(args, dtype, device, profile, **kwargs)
        baselines[name] = decode_ms(baseline, bsz, "graph")
        del baseline
        torch.cuda.empty_cache()
    system = build_system(profile, device="cuda")
    graph, replay, compiled, eager = (decode_ms(system.generator, bsz, how) for how in ("graph", "replay", "compiled", "eager"))
    rows.append((f"decode step, batch {bsz}", f"graph {graph:.2f} ms", f"eager {eager:.2f} ms", f"{eager / graph:.1f}x"))
    rows.append((f"decode step, batch {bsz}", f"graph {graph:.2f} ms", f"compiled, no graph {compiled:.2f} ms", f"{compiled / graph:.1f}x"))
    rows.append((f"decode step, batch {bsz}", f"graph replay alone {replay:.2f} ms", f"with input copies + sync {graph:.2f} ms", f"{graph / replay:.2f}x"))
    kernel_table(system.generator, bsz, opts.out / "decode_kernels.txt")
    for name, what, ours, theirs in (
        ("sdpa", "cache attention", "Triton kernel", "gathered rows, grouped SDPA + mask"),
        ("unfused", "decode GEMMs", "q/k/v and gate/up fused", "7 per block"),
        ("torch_sampler", "sampling", "Triton kernels", "PyTorch ops"),
    ):
        other = baselines[name]
        rows.append((f"{what}, batch {bsz} (graph)", f"{ours} {graph:.2f} ms", f"{theirs} {other:.2f} ms", f"{other / graph:.2f}x"))

    startup = {p: system.startup.get(p, 0.0) for p in STARTUP_PHASES}
    records = [system.step() for _ in range(opts.steps)]
    phases = {p: statistics.median(r.times[p] for r in records[1:] or records) for p in records[0].times}
    step = statistics.median(r.seconds for r in records[1:] or records)
    rows.append(("startup", " ".join(f"{k}={v:.1f}s" for k, v in startup.items()), f"total {sum(startup.values()):.1f} s", ""))
    rows.append(("GRPO step (median)", " ".join(f"{k}={v * 1000:.0f}ms" for k, v in phases.items()), f"total {step:.3f} s", ""))
    ledger = system.ledger.counts()
    system.close()

    env = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "suite": profile.name,
        "capture_sizes": profile.capture_sizes,
        "date": time.strftime("%Y-%m-%d"),
    }
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    table = "\n".join(" | ".join(c.ljust(width[i]) for i, c in enumerate(r)) for r in rows)
    results.update(env=env, rows=rows, startup=startup, step_phases=phases, step=step, compiles=ledger,
                   decode_ms={"graph": graph, "replay": replay, "compiled": compiled, "eager": eager,
                              **{f"graph_{name}": ms for name, ms in baselines.items()}})
    (opts.out / "bench.json").write_text(json.dumps(results, indent=2))
    md = "| what | ours | baseline | ratio |\n| --- | --- | --- | --- |\n" + "\n".join(f"| {' | '.join(r)} |" for r in rows)
    (opts.out / "bench.md").write_text(f"# {env['date']} {env['device']}, torch {env['torch']}\n\n{md}\n")
    print(json.dumps(env))
    print(table)


if __name__ == "__main__":
    main()
