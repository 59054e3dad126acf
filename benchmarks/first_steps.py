"""Where a GRPO system's first steps spend their time, against its later steps.

    python benchmarks/first_steps.py [--suite qwen3-0.6b] [--variant fp32] [--device cuda] [--steps 4]
                                     [--compile-cache FILE] [--profile-startup] [--out DIR]

Builds the reference system as the suite does, then runs the steps one by one and prints, per step,
generate / train / weight_sync, the compilations Dynamo made during it and the Inductor cache
counters it moved. Step 1 runs under cProfile; its top functions by cumulative time go to
first-step-profile.txt in --out. A first step much slower than the rest with no compilation in it
is work that belongs in the timed startup (and, if it is a compile, in the compile cache).
--profile-startup runs the build under cProfile too (startup-profile.txt: by cumulative and by own
time), to see what a startup phase spends its time on.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

import torch

from titan_conformance.compilation.cache import (
    compile_cache_counters, restore_compile_cache, save_compile_cache, variant_cache_path,
)
from titan_conformance.profile import load_profile
from titan_conformance.providers.reference import build_system


def top_functions(profiler: cProfile.Profile, key: str, count: int) -> str:
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats(key).print_stats(count)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="qwen3-0.6b")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--compile-cache", default=None)
    parser.add_argument("--profile-startup", action="store_true")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = variant_cache_path(Path(args.compile_cache), args.variant or "base") if args.compile_cache else None
    use = restore_compile_cache(cache) if cache else None
    profile = load_profile(args.suite, args.variant)
    wall = time.perf_counter()
    if args.profile_startup:
        profiler = cProfile.Profile()
        system = profiler.runcall(build_system, profile, device=args.device)
        (out / "startup-profile.txt").write_text(top_functions(profiler, "cumulative", 90) + top_functions(profiler, "tottime", 40))
    else:
        system = build_system(profile, device=args.device)
    built = time.perf_counter() - wall
    if use is not None:
        save_compile_cache(cache, use)
    rows = []
    try:
        print(f"startup {built:.1f}s: " + ", ".join(f"{k}={v:.2f}s" for k, v in system.startup.items()))
        system.validate()
        for i in range(args.steps):
            events, counters = len(system.ledger.events), compile_cache_counters()
            profiler = cProfile.Profile() if i == 0 else None
            start = time.perf_counter()
            if profiler:
                profiler.enable()
            record = system.step()
            if profiler:
                profiler.disable()
                (out / "first-step-profile.txt").write_text(top_functions(profiler, "cumulative", 60))
            seconds = time.perf_counter() - start
            moved = {k: v - counters.get(k, 0) for k, v in compile_cache_counters().items() if v != counters.get(k, 0)}
            compiled = [f"{e.region}: {e.reason}" for e in system.ledger.events[events:]]
            rows.append({"step": i + 1, "seconds": seconds, **{k: float(v) for k, v in record.times.items()},
                         "compiles": compiled, "cache_counters": moved})
    finally:
        system.close()
    print(f"{'step':>4} {'total':>8} {'generate':>9} {'train':>8} {'sync':>8}  compiles / cache counters")
    for r in rows:
        print(f"{r['step']:>4} {r['seconds']:>8.3f} {r['generate']:>9.3f} {r['train']:>8.3f} {r['weight_sync']:>8.3f}  "
              f"{r['compiles'] or '-'} {r['cache_counters'] or ''}")
    later = sorted(r["seconds"] for r in rows[1:])
    if later:
        print(f"first step / median later step: {rows[0]['seconds'] / later[len(later) // 2]:.1f}x")
    (out / "first-steps.json").write_text(json.dumps({"startup": system.startup, "built_s": built, "steps": rows}, indent=1))
    if torch.cuda.is_available():
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
