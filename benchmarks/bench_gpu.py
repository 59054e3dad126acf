"""Startup and step-time benchmark of the GRPO system, every ratio measured in one run.

    python benchmarks/bench_gpu.py [--suite qwen3-0.6b] [--out DIR]

Rows: regional (per-block) vs whole-model compile, cold (Inductor caches off); 7 FULL decode graphs
from our capture-size policy (max_num_seqs = 8 x 5 = 40) vs the 35 sizes vLLM's default policy
captures at max_num_seqs = 128; FULL-graph vs compiled vs eager decode at batch 40; and the GRPO
system's startup and step time by phase. Prints one table; writes JSON + Markdown to --out.
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
from titan_conformance.generator.capture_sizes import vllm_default_capture_sizes  # noqa: E402
from titan_conformance.generator.native import NativeGenerator  # noqa: E402
from titan_conformance.generator.sampling import sampling_tensors  # noqa: E402
from titan_conformance.model import ModelArgs, Qwen3Model  # noqa: E402
from titan_conformance.system.grpo_system import STARTUP_PHASES, GRPOSystem  # noqa: E402
from titan_conformance.system.profile import load_profile  # noqa: E402


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
    gen = NativeGenerator(args, CompileConfig(), CompileLedger(), max_num_seqs, 160, device, dtype, "FULL", sizes)
    gen.model.init_weights(0)
    sync()
    start = time.perf_counter()
    report = gen.capture()
    sync()
    total = time.perf_counter() - start
    del gen
    torch.cuda.empty_cache()
    return total, len(report.sizes)


def decode_ms(system: GRPOSystem, batch: int, how: str, iters: int = 50) -> float:
    gen = system.generator
    vocab = gen.model.args.vocab_size
    args = (
        torch.zeros(batch, 1, dtype=torch.long, device=gen.device),
        torch.full((batch, 1), 8, dtype=torch.long, device=gen.device),
        torch.zeros(batch, vocab, device=gen.device),
        *sampling_tensors(1.0, gen.device),
    )

    def step():
        if how == "eager":
            with torch.compiler.set_stance("force_eager"):
                gen.decode_step(*args)
        else:
            gen.run_decode(*args, use_graph=how == "graph")

    with torch.no_grad():
        for _ in range(3):
            step()
        times = [seconds(step) for _ in range(iters)]
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="qwen3-0.6b")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/results")))
    opts = parser.parse_args()
    device = torch.device("cuda")
    profile = load_profile(opts.suite)
    args = ModelArgs.from_hf_config(profile.model.config)
    dtype = getattr(torch, profile.model.dtype)
    rows: list[tuple[str, str, str, str]] = []

    regional = compile_time(args, dtype, device, True, 40, 109)
    whole = compile_time(args, dtype, device, False, 40, 109)
    rows.append(("compile (first fwd+bwd, cold)", f"regional {regional:.1f} s", f"whole-model {whole:.1f} s", f"{whole / regional:.2f}x"))

    ours, n_ours = capture_time(args, dtype, device, profile.max_num_seqs, profile.capture_sizes)
    vllm, n_vllm = capture_time(args, dtype, device, 128, vllm_default_capture_sizes(128))
    rows.append(("FULL capture (incl. per-size warm-up)", f"{n_ours} sizes {ours:.1f} s", f"{n_vllm} sizes {vllm:.1f} s", f"{vllm / ours:.2f}x"))

    torch._dynamo.reset()
    system = GRPOSystem(profile, device="cuda")
    bsz = profile.max_num_seqs
    graph, compiled, eager = (decode_ms(system, bsz, how) for how in ("graph", "compiled", "eager"))
    rows.append((f"decode step, batch {bsz}", f"graph {graph:.2f} ms", f"eager {eager:.2f} ms", f"{eager / graph:.1f}x"))
    rows.append((f"decode step, batch {bsz}", f"graph {graph:.2f} ms", f"compiled, no graph {compiled:.2f} ms", f"{compiled / graph:.1f}x"))

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
    opts.out.mkdir(parents=True, exist_ok=True)
    results = {"env": env, "rows": rows, "startup": startup, "step_phases": phases, "step": step,
               "decode_ms": {"graph": graph, "compiled": compiled, "eager": eager}, "compiles": ledger,
               "compile_s": {"regional": regional, "whole": whole}, "capture_s": {"ours": ours, "vllm_default": vllm}}
    (opts.out / "bench.json").write_text(json.dumps(results, indent=2))
    md = "| what | ours | baseline | ratio |\n| --- | --- | --- | --- |\n" + "\n".join(f"| {' | '.join(r)} |" for r in rows)
    (opts.out / "bench.md").write_text(f"# {env['date']} {env['device']}, torch {env['torch']}\n\n{md}\n")
    print(json.dumps(env))
    print(table)


if __name__ == "__main__":
    main()
