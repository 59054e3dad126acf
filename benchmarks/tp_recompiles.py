"""Where does a TP profile's recompile_limit come from: measure it.

Runs the GRPO system of a TP profile on tp spawned ranks (gloo on CPU, NCCL on CUDA) once per
configuration and prints, per region and rank, every compilation with its guard-failure reason,
each region's observed maximum and the recommended recompile_limit (observed + margin), the
parity numbers (trainer TP vs generator TP, TP vs TP=1) and the launch timing.

    python benchmarks/tp_recompiles.py [--suite suites/tiny-cpu-tp2.toml] [--device cpu|cuda]
        [--steps 3] [--configs inductor:unwrap,eager:no-unwrap] [--json out.json]
        [--tp N] [--cudagraph MODE] [--timeout SECONDS]

`--timeout` bounds each configuration (a rank that hangs in a collective is killed then and the
next configuration runs); the JSON is rewritten after every configuration, so a run cut short
keeps what it measured.

`--tp` and `--cudagraph` override the profile's, e.g. to run the qwen3-0.6b shape at TP=2.

A configuration is `<backend>:<unwrap|no-unwrap>`. Without the unwrap the Inductor and aot_eager
backends fail in the trainer's first backward on torch 2.13 (see parallel/unwrap.py); the Dynamo-only
`eager` backend shows the recompiles the AsyncCollectiveTensor inputs cause.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from titan_conformance.checks.parity import flat
from titan_conformance.checks.tp import tp_parity_verdicts, tp_recompile_verdict
from titan_conformance.compilation.ledger import CompileLedger
from titan_conformance.parallel.launch import LaunchTiming, RankError, run_ranks
from titan_conformance.parallel.tp_run import run_tp
from titan_conformance.profile import CudagraphMode, load_profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tp_probes import smoke  # noqa: E402  (the launcher's smoke test: the cost of a bare process group)

DEFAULT_SUITE = Path(__file__).resolve().parent.parent / "suites" / "tiny-cpu-tp2.toml"


def measure(profile, spec: str | None, backend: str, unwrap: bool, steps: int, device: str, timeout: float = 560.0) -> dict:
    profile = dataclasses.replace(
        profile,
        compile=dataclasses.replace(profile.compile, backend=backend, recompile_limit=64),
        parallel=dataclasses.replace(profile.parallel, unwrap_async=unwrap),
    )
    timing, start = LaunchTiming(), time.perf_counter()
    try:
        results = run_tp(profile, spec, steps=steps, device=device, timing=timing, timeout=timeout)
    except RankError as e:  # the first line names the failure; the rest holds the ranks' tracebacks
        return {"error": str(e).splitlines()[0], "error_detail": str(e)[-6000:],
                "seconds": time.perf_counter() - start}
    recompiles = tp_recompile_verdict(results, profile)
    out = {
        "seconds": time.perf_counter() - start,
        "launch": {"total": timing.total, "ranks": timing.ranks},
        "startup_rank0": results[0].startup,
        "errors": [r.error for r in results],
        "compiles_per_region": recompiles.metrics["compiles_per_region"],
        "observed_max": recompiles.metrics["observed_max"],
        "recommended_recompile_limit": recompiles.metrics["recommended_recompile_limit"],
        "ledger": CompileLedger(events=[e for r in results for e in r.events]).format(),
    }
    if not any(out["errors"]):
        r0 = results[0]
        out["parity"] = {v.name: {"passed": v.passed, **{k: v.metrics.get(k) for k in ("max_abs", "mean_abs", "tokens")}}
                         for v in tp_parity_verdicts(results, profile)}
        out["tp_vs_tp1_max_abs"] = float((flat(r0.trainer_logprobs) - flat(r0.tp1_logprobs)).abs().max())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default=str(DEFAULT_SUITE))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--configs", default="inductor:unwrap,eager:no-unwrap")
    ap.add_argument("--json", default=None)
    ap.add_argument("--tp", type=int, default=None)
    ap.add_argument("--cudagraph", default=None, help="NONE, FULL or FULL_DECODE_ONLY")
    ap.add_argument("--timeout", type=float, default=560.0, help="seconds per configuration")
    ap.add_argument("--system", default=None, help="provider (module:factory or entry point; default ours)")
    args = ap.parse_args(argv)
    profile = load_profile(args.suite)
    if args.cudagraph is not None:
        args.cudagraph = CudagraphMode(args.cudagraph)
    if args.tp is not None:
        profile = dataclasses.replace(profile, parallel=dataclasses.replace(profile.parallel, tp=args.tp))
    if args.cudagraph is not None:
        profile = dataclasses.replace(profile, cudagraph=dataclasses.replace(profile.cudagraph, mode=args.cudagraph))
    backend = "nccl" if args.device == "cuda" else "gloo"
    report = {"torch": torch.__version__, "device": args.device, "suite": profile.name, "tp": profile.parallel.tp}
    spawn = []
    for _ in range(3):
        t = LaunchTiming()
        run_ranks(smoke, profile.parallel.tp, backend=backend, timing=t)
        spawn.append(t.total)
    report["spawn_seconds"] = spawn
    print(f"torch {torch.__version__}, {args.device}, {profile.name} tp={profile.parallel.tp}; "
          f"spawn+init+all-reduce+destroy of a {profile.parallel.tp}-rank {backend} group: "
          + ", ".join(f"{s:.2f}s" for s in spawn), flush=True)
    for config in args.configs.split(","):
        backend_name, mode = config.split(":")
        result = measure(profile, args.system, backend_name, mode == "unwrap", args.steps, args.device, args.timeout)
        report[config] = result
        print(f"\n=== {config}: {result['seconds']:.1f}s", flush=True)
        for key in ("error", "errors", "compiles_per_region", "observed_max", "recommended_recompile_limit",
                    "parity", "tp_vs_tp1_max_abs", "startup_rank0", "launch", "error_detail"):
            if key in result:
                print(f"{key}: {result[key]}")
        if "ledger" in result:
            print(result["ledger"])
        if args.json:  # after every configuration: a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
