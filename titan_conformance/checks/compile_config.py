"""One compile config: the trainer's and the generator's regions compiled with the same settings,
and every role's compiled regions actually run over the GRPO run.

The on-policy promise rests on both sides running the same compiled blocks; a generator compiled
with another backend, Inductor mode or options (or without fullgraph, or with other dynamic-shape
settings) computes through other kernels and fuses differently, and its numerics drift from the
trainer's. The settings compared are the effective ones: what each region was given, with the mode
and options its backend received at compile time.
"""

from __future__ import annotations

from titan_conformance.checks.result import CheckResult
from titan_conformance.protocol import CompileLedger

GENERATOR_ROLES = ("generator.", "vllm.")


def _show(settings: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in settings.items())


def compile_config_verdict(ledger: CompileLedger) -> CheckResult | None:
    """None when the ledger holds no trainer or no generator region with recorded settings."""
    effective = ledger.effective_settings()
    trainer = {r: s for r, s in effective.items() if r.startswith("trainer.")}
    generator = {r: s for r, s in effective.items() if r.startswith(GENERATOR_ROLES)}
    if not trainer or not generator:
        return None
    metrics = {"settings": effective}
    (t_region, t_settings), = trainer.items()
    causes = []
    for region, settings in generator.items():
        keys = dict.fromkeys([*t_settings, *settings])
        differ = {k: (t_settings.get(k), settings.get(k)) for k in keys if t_settings.get(k) != settings.get(k)}
        if differ:
            causes.append(f"{region} vs {t_region}: " + ", ".join(f"{k} {g!r} vs {t!r}" for k, (t, g) in differ.items()))
    if not causes:
        return CheckResult("compile_config", True, f"trainer and generator compiled alike: {_show(t_settings)}", metrics)
    return CheckResult(
        "compile_config", False,
        "The generator's blocks are compiled differently from the trainer's (" + "; ".join(causes)
        + "): they do not run the same compiled model. Compile both from one CompileConfig.",
        metrics,
    )


def compiled_regions_ran_verdict(settings: dict[str, dict], calls: dict[str, int]) -> CheckResult:
    """Every region compiled with `enable` on ran its compiled graphs during the run (`calls`: runs
    per region over the run). A region that compiled at startup but ran eagerly afterwards (a
    `force_eager` stance, an eager fallback, a forward that bypasses the compiled blocks) passes
    every compile count while testing nothing of the compiled model."""
    compiled = [r for r, s in settings.items() if s.get("enable")]
    idle = [r for r in compiled if not calls.get(r)]
    metrics = {"compiled_calls": {r: calls.get(r, 0) for r in compiled}}
    if not compiled:
        return CheckResult("compiled_regions_ran", True, "no region is compiled (compile.enable = false)", metrics)
    if not idle:
        shown = ", ".join(f"{r}: {calls[r]}" for r in compiled)
        return CheckResult("compiled_regions_ran", True, f"every compiled region ran compiled over the run ({shown} graph runs)", metrics)
    return CheckResult(
        "compiled_regions_ran", False,
        f"Compiled region(s) {', '.join(idle)} never ran a compiled graph over the GRPO run: the role ran "
        "eagerly after its startup compile (a force_eager stance, an eager fallback past recompile_limit, "
        "or a forward that bypasses the compiled blocks), so the run checked nothing of its compiled "
        "model. Runs per region: " + ", ".join(f"{r}={calls.get(r, 0)}" for r in compiled) + ".",
        metrics,
    )
