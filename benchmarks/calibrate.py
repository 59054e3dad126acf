"""Calibrate a profile's limits from measurement: clean runs over seeds, and planted faults in place.

    python benchmarks/calibrate.py --suite qwen3-0.6b --device cuda --variants ,fp32 \
        --seeds 0,1,2 [--fault-seeds 0,1] [--warmup-lrs 1e-4,3e-4 --warmup-max 60] \
        [--grpo-lrs 1e-5,3e-5] [--steps 10] [--out DIR]

A limit is only as good as the runs it was set from. This prints, in one process, what every
statistic a check holds to measured on clean runs (one system per variant and seed) and on the same
systems with a fault planted in place (a 1%-off RoPE base or another norm eps in the generator,
untempered logprobs on either side, a generate phase made 5x slower), so a limit can be set a
margin above the clean values and below the faults, and the margin read off one table.

Optional grids first: the supervised warm-up of a random checkpoint (validation reward, mean
sampled logprob and how many completions end on EOS every 10 steps, per learning rate), and GRPO's
learning rate (validation reward before and after the run's steps, from the same warmed weights).
Writes calibrate-<suite>.json to --out after every system, so a run cut short keeps what it had.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from titan_conformance.checks.compile_config import compiled_regions_ran_verdict
from titan_conformance.checks.cudagraphs import graph_replay_verdict
from titan_conformance.checks.finite import check_run_finite
from titan_conformance.checks.invariance import check_batch_invariance, check_prefill_decode
from titan_conformance.checks.parity import check_logprob_parity
from titan_conformance.checks.precision import check_precision_floor
from titan_conformance.checks.speed import check_generate_overhead
from titan_conformance.checks.weight_sync import check_weight_sync
from titan_conformance.compilation import CompileConfig, CompileLedger
from titan_conformance.generator.base import GeneratorConfig
from titan_conformance.generator.qwen3 import qwen3_generator
from titan_conformance.model import ModelArgs, Qwen3Model
from titan_conformance.run import perform_run
from titan_conformance.providers.reference import build_system
from titan_conformance.profile import load_profile
from titan_conformance.task import SortLettersTask, TaskTokenizer
from titan_conformance.task.sort_letters import build_tokenizer
from titan_conformance.task.warm_up import warm_up

PARITY_STATS = ("max_abs", "p99_abs", "mean_abs", "k3_kl")
FLOOR_STATS = ("mean_abs", "p99_abs", "k3_kl")


# The faults of tests/faults.py, planted in place on a built system (each returns its undo).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import faults  # noqa: E402

FAULTS = {
    "rope_1pct": lambda system: faults.plant_rope_theta(system, 1.01),
    "norm_eps": faults.plant_norm_eps,
    "untempered_generator": faults.plant_untempered_generator,
    "untempered_trainer": faults.plant_untempered_trainer,
    "slow_generate": faults.plant_slow_generate,
}


# --- measurements ------------------------------------------------------------------------------


def measure(system, run, profile, with_sync: bool = True) -> dict:
    parity = check_logprob_parity(run, profile)
    floor = check_precision_floor(system, profile)
    speed = check_generate_overhead(run, profile)
    out = {
        "parity": {k: parity.metrics.get(k) for k in (*PARITY_STATS, "tokens")},
        "floor": floor.metrics.get("floor"),
        "trainer_ratio": floor.metrics.get("trainer_ratio"),
        "generator_ratio": floor.metrics.get("generator_ratio"),
        "floor_tokens": floor.metrics.get("tokens"),
        "speed_ratio": speed.metrics.get("ratio") if not isinstance(speed, str) else None,
        "bare_decode_ms": 1e3 * speed.metrics.get("bare_decode_step_s", 0) if not isinstance(speed, str) else None,
        "finite": check_run_finite(run).passed,
        "compiled_ran": compiled_regions_ran_verdict(run.compile_settings, run.compiled_calls).passed,
        "pre": getattr(run.pre, "total", None), "post": getattr(run.post, "total", None),
        "avg_tokens": statistics.mean(r.avg_tokens for r in run.records) if run.records else None,
        "step_times": [r.times for r in run.records],
        "error": run.error,
    }
    if system.generator.graphs:
        replays = graph_replay_verdict(run.records, sorted(system.generator.graphs))
        out["replays_ok"] = not isinstance(replays, str) and replays.passed
    for check in (check_batch_invariance, check_prefill_decode):
        result = check(system, profile)
        out[result.name] = {"passed": result.passed, **{k: result.metrics.get(k) for k in ("max_abs", "p99_abs", "mean_abs")}}
    if with_sync:
        sync = check_weight_sync(system, profile)
        out["weight_sync"] = {"passed": sync.passed, "message": sync.message[:200],
                              **{k: sync.metrics.get(k) for k in ("parity_noise_mean_abs", "trainer_moved_mean_abs", "tracking_error", "trainer_steps")}}
    return out


def warmup_grid(profile, device, lrs, max_steps, seeds) -> list[dict]:
    """Validation reward, mean sampled logprob and EOS rate every 10 steps of one warm-up (as the
    system runs it: one optimizer, the profile's seed), per lr and seed."""
    tok = TaskTokenizer(build_tokenizer())
    task = SortLettersTask(tok)
    args = ModelArgs.from_hf_config(profile.model.config)
    torch_dtype = getattr(torch, profile.model.dtype)
    config = GeneratorConfig(max_num_seqs=40, max_model_len=profile.generator.max_model_len, device=device)
    gen = qwen3_generator(args, config=config, compile_config=CompileConfig(enable=False), ledger=CompileLedger(), dtype=torch_dtype)
    problems = task.validation_set(40)
    rows = []
    for lr in lrs:
        for seed in seeds:
            with torch.device(device):
                model = Qwen3Model(args).to(torch_dtype)
            model.init_weights(seed)
            start = time.perf_counter()

            def evaluate(step: int) -> None:
                if step % 10:
                    return
                gen.load_weights((n, p.detach()) for n, p in model.named_parameters())
                out = gen.generate([p.prompt_ids for p in problems], 1, 12, profile.sampling.spec, 0, tok.eos_id)
                rows.append({
                    "lr": lr, "seed": seed, "steps": step, "seconds": time.perf_counter() - start,
                    "reward": statistics.mean(task.reward(p, c.token_ids).total for p, c in zip(problems, out)),
                    "mean_logprob": statistics.mean(statistics.mean(c.logprobs) for c in out),
                    "eos": statistics.mean(c.finished for c in out),
                })
                print("warmup " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()), flush=True)

            warm_up(model, task, max_steps, seed, batch=profile.model.warmup_batch, lr=lr, after_step=evaluate)
    return rows


def pick_warmup(rows) -> tuple[float, int] | None:
    """The (lr, steps) whose mean validation reward over seeds is nearest 1.1 (of 1.5): partly
    competent, with entropy and reward left for GRPO; fewer steps on a tie."""
    by = {}
    for r in rows:
        by.setdefault((r["lr"], r["steps"]), []).append(r)
    fits = [(abs(statistics.mean(r["reward"] for r in rs) - 1.1), steps, lr) for (lr, steps), rs in by.items()
            if all(r["mean_logprob"] < -0.1 for r in rs)]
    if not fits:
        return None
    _, steps, lr = min(fits)
    return lr, steps


def grpo_lr_grid(system, profile, lrs, steps) -> list[dict]:
    """From the same warmed weights: validation reward before and after `steps` GRPO steps per lr."""
    snapshot = {k: v.clone() for k, v in system.trainer.model.state_dict().items()}
    rows = []
    for lr in lrs:
        system.trainer.model.load_state_dict(snapshot)
        system.trainer.config = dataclasses.replace(system.trainer.config, lr=lr)
        system.trainer.reset_optimizer()
        system.sync_weights()
        pre = system.validate().total
        records = [system.step() for _ in range(steps)]
        rows.append({"lr": lr, "pre": pre, "post": system.validate().total,
                     "step_rewards": [r.reward.total for r in records]})
        print(f"grpo lr={lr:g} pre={rows[-1]['pre']:.3f} post={rows[-1]['post']:.3f} rewards="
              + ",".join(f"{x:.2f}" for x in rows[-1]["step_rewards"]), flush=True)
    system.trainer.model.load_state_dict(snapshot)
    system.trainer.config = dataclasses.replace(system.trainer.config, lr=profile.grpo.lr)
    system.trainer.reset_optimizer()
    system.history.clear()
    system.sync_weights()
    return rows


def spread(values) -> str:
    values = [v for v in values if isinstance(v, (int, float))]
    return f"{min(values):.3g}..{max(values):.3g}" if values else "-"


def print_tables(results: dict) -> None:
    for name, block in results["systems"].items():
        clean = [s["clean"] for s in block.values() if "clean" in s]
        print(f"\n== {name}: clean over seeds {list(block)} ==")
        for k in PARITY_STATS:
            print(f"parity {k:9s} {spread(c['parity'][k] for c in clean)}")
        for k in FLOOR_STATS:
            print(f"floor {k:9s} {spread(c['floor'][k] for c in clean)}  trainer x{spread(c['trainer_ratio'][k] for c in clean)}"
                  f"  generator x{spread(c['generator_ratio'][k] for c in clean)}")
        print(f"speed ratio {spread(c['speed_ratio'] for c in clean)} (bare {spread(c['bare_decode_ms'] for c in clean)} ms)")
        print("learning " + ", ".join(f"{c['pre']:.3f}->{c['post']:.3f}" for c in clean if c["pre"] is not None))
        print("weight sync " + ", ".join(str(c.get("weight_sync", {}).get("passed")) for c in clean))
        for name in ("batch_invariance", "prefill_decode"):
            print(f"{name} max_abs {spread(c[name]['max_abs'] for c in clean)} passed {[c[name]['passed'] for c in clean]}")
        print("compiles " + "; ".join(str(s.get("compiles")) for s in block.values()))
        for fault in FAULTS:
            rows = [s["faults"][fault] for s in block.values() if fault in s.get("faults", {})]
            if not rows:
                continue
            parity = " ".join(f"{k}={spread(r['parity'][k] for r in rows)}" for k in ("max_abs", "mean_abs", "p99_abs"))
            ratio = " ".join(f"{k}=x{spread(r['generator_ratio'][k] for r in rows)}/x{spread(r['trainer_ratio'][k] for r in rows)}"
                             for k in FLOOR_STATS)
            print(f"fault {fault:22s} parity {parity} | gen/trainer floor ratio {ratio} | speed x{spread(r['speed_ratio'] for r in rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="qwen3-0.6b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default="", help="comma-separated variants of the suite ('' is the base)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--fault-seeds", default="0")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per clean run (default: the profile's)")
    parser.add_argument("--warmup-lrs", default="", help="warm-up grid learning rates (empty: no grid)")
    parser.add_argument("--warmup-max", type=int, default=60)
    parser.add_argument("--grpo-lrs", default="", help="GRPO learning rates tried on the first seed (empty: no grid)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/results")))
    opts = parser.parse_args()
    device = torch.device(opts.device)
    results = {"suite": opts.suite, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "systems": {}}
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"calibrate-{Path(opts.suite).stem}.json"

    def save():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str))
        os.replace(tmp, path)

    seeds = [int(s) for s in opts.seeds.split(",")]
    fault_seeds = {int(s) for s in opts.fault_seeds.split(",") if s}
    for variant in opts.variants.split(","):
        base = load_profile(opts.suite, variant or None)
        warmup = results.get("warmup_pick") or (base.model.warmup_lr, base.model.warmup_steps)
        if opts.warmup_lrs and base.model.checkpoint == "random" and "warmup_pick" not in results:  # the first variant's
            rows = warmup_grid(base, device, [float(x) for x in opts.warmup_lrs.split(",")], opts.warmup_max, seeds[:2])
            results["warmup_grid"] = rows
            warmup = results["warmup_pick"] = pick_warmup(rows) or warmup
            print(f"warm-up picked for {base.name}: lr={warmup[0]:g} steps={warmup[1]}", flush=True)
            save()
        block = results["systems"].setdefault(base.name, {})
        for seed in seeds:
            prof = dataclasses.replace(
                base, seed=seed,
                model=dataclasses.replace(base.model, warmup_lr=warmup[0], warmup_steps=warmup[1]),
                run=dataclasses.replace(base.run, steps=opts.steps or base.run.steps),
            )
            start = time.perf_counter()
            system = build_system(prof, device=opts.device)
            entry = block.setdefault(seed, {"startup": dict(system.startup), "build_s": time.perf_counter() - start})
            try:
                if opts.grpo_lrs and seed == seeds[0]:
                    entry["grpo_lr_grid"] = grpo_lr_grid(system, prof, [float(x) for x in opts.grpo_lrs.split(",")], prof.run.steps)
                run = perform_run(system, prof.run.steps)
                entry["clean"] = measure(system, run, prof)
                entry["ledger"], entry["compiles"] = system.ledger.format(), system.ledger.counts()
                c = entry["clean"]
                print(f"{prof.name} seed {seed}: startup {', '.join(f'{k}={v:.1f}' for k, v in system.startup.items())}; "
                      f"parity {c['parity']}; floor {c['floor']}; ratios tr {c['trainer_ratio']} gen {c['generator_ratio']}; "
                      f"speed {c['speed_ratio']}; learning {c['pre']}->{c['post']}; sync {c.get('weight_sync')}; "
                      f"compiles {system.ledger.counts()}", flush=True)
                save()
                if seed in fault_seeds:
                    for name in opts.faults.split(","):
                        undo = FAULTS[name](system)
                        try:
                            fault_run = perform_run(system, 2)
                            entry.setdefault("faults", {})[name] = measure(system, fault_run, prof, with_sync=False)
                        finally:
                            undo()
                        f = entry["faults"][name]
                        print(f"  fault {name}: parity {f['parity']}; gen ratio {f['generator_ratio']}; trainer ratio "
                              f"{f['trainer_ratio']}; speed {f['speed_ratio']}", flush=True)
                        save()
            finally:
                system.close()
                del system
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print_tables(results)


if __name__ == "__main__":
    main()
