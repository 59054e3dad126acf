"""Generator startup, as a generator process pays it: build, weights, compile, FULL-graph capture.

    python benchmarks/startup.py [--suite qwen3-0.6b] [--label cold] [--out DIR] [--device cuda]
                                 [--compile-cache FILE] [--no-warm-start] [--cprofile]

In an RL deployment the generator is a process of its own (vLLM's startup is what the seed PR cut
from ~50 s to ~15 s), so this builds the native generator alone: the same regionally compiled
blocks, prefill + decode compiled by a first short generate, then one FULL graph per capture size.
Run it twice with one TORCHINDUCTOR_CACHE_DIR to see cold (empty cache) and warm (a runner's second
run) startup, or with fresh cache dirs and one --compile-cache FILE to see a new runner that
restores the file a previous job saved (`compilation/cache.py`). --no-warm-start leaves Inductor's
workers and our Triton kernels to the first compile and launch (`compilation/warm_start.py`). Prints
one line per phase and each compilation with its backend seconds; writes startup-<label>.json (with
Dynamo's compile-time breakdown and the Inductor cache counters) to --out, and with --cprofile the
top functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from titan_conformance.compilation import CompileLedger
from titan_conformance.compilation.cache import compile_cache_counters, restore_compile_cache, save_compile_cache
from titan_conformance.data_files import resolve_checkpoint
from titan_conformance.generator.base import GeneratorConfig
from titan_conformance.generator.qwen3 import qwen3_generator
from titan_conformance.model import ModelArgs
from titan_conformance.model.checkpoint import read_model_args
from titan_conformance.profile import load_profile
from titan_conformance.timing import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="qwen3-0.6b")
    parser.add_argument("--label", default="run")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/results")))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--cprofile", action="store_true", help="write startup-<label>.prof.txt: top functions")
    parser.add_argument("--compile-cache", type=Path, help="as --tc-compile-cache: restored when present, saved after")
    parser.add_argument("--no-warm-start", action="store_true", help="compile.warm_start = false (the A/B baseline)")
    opts = parser.parse_args()
    if opts.cprofile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
    if opts.compile_cache:
        restore_start = time.perf_counter()
        cache_use = restore_compile_cache(opts.compile_cache)
        print(f"restored {cache_use.restored_bytes} bytes of compile cache in {time.perf_counter() - restore_start:.2f}s")
    process_start = time.perf_counter()
    device = torch.device(opts.device)
    profile = load_profile(opts.suite)
    ckpt = profile.model.checkpoint
    args = ModelArgs.from_hf_config(profile.model.config) if ckpt == "random" else read_model_args(resolve_checkpoint(ckpt))
    s = profile.sampling
    compile_config = dataclasses.replace(profile.compile, warm_start=not opts.no_warm_start)
    phases: dict[str, float] = {}
    with CompileLedger() as ledger:
        with timed(phases, "device_init", device):
            torch.empty(1, device=device)
        with timed(phases, "build", device):
            gen = qwen3_generator(args, config=GeneratorConfig.from_profile(profile, device), compile_config=compile_config,
                                  ledger=ledger, dtype=getattr(torch, profile.model.dtype))
        with timed(phases, "weight_load", device):  # seeded random: startup does not depend on values
            gen.model.init_weights(profile.seed)
        with timed(phases, "compile", device):  # prefill at the step's batch, then decode
            gen.generate([[1] * 5] * s.num_prompts_per_step, s.n, 2, s.spec, 0, eos_id=-1)
        with timed(phases, "capture", device):
            report = gen.capture()
        with timed(phases, "first_generate", device):
            gen.generate([[1] * 9] * s.num_prompts_per_step, s.n, s.max_tokens, s.spec, 1, eos_id=-1)
    if opts.compile_cache:
        save_compile_cache(opts.compile_cache, cache_use)
        print(f"saved {cache_use.saved_bytes} bytes of compile cache")
    if opts.cprofile:
        prof.disable()
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text).sort_stats("cumulative")
        stats.print_stats(80)
        stats.sort_stats("tottime").print_stats(40)
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / f"startup-{opts.label}.prof.txt").write_text(text.getvalue())
    compiles = [{"index": e.index, "seconds": e.seconds, "inputs": e.inputs, "reason": e.reason} for e in ledger.events]
    result = {
        "label": opts.label,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "suite": profile.name,
        "inductor_cache_dir_set": "TORCHINDUCTOR_CACHE_DIR" in os.environ,
        "warm_start": compile_config.warm_start,
        "phases": phases,
        "compile_plus_capture": phases["compile"] + phases["capture"],
        "capture_sizes": report.sizes,
        "capture_seconds": report.seconds,
        "compiles": compiles,
        "process_seconds": time.perf_counter() - process_start,
        "compile_times": torch._dynamo.utils.compile_times(repr="str", aggregate=True),
        "compile_cache": compile_cache_counters(),
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"startup-{opts.label}.json").write_text(json.dumps(result, indent=1))
    print(f"{opts.label}: " + " ".join(f"{k}={v:.2f}s" for k, v in phases.items())
          + f" | compile+capture {result['compile_plus_capture']:.2f}s | {len(report.sizes)} graphs")
    for c in compiles:
        print(f"  compile {c['index']}: {c['seconds']:.2f}s {' '.join(c['inputs'][:1])} ({c['reason'][:80]})")


if __name__ == "__main__":
    main()
