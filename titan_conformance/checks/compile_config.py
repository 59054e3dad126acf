"""One compile config: the trainer's and the generator's regions compiled with the same settings.

The on-policy promise rests on both sides running the same compiled blocks; a generator compiled
with another backend (or without fullgraph, or with other dynamic-shape settings) computes through
other kernels and fuses differently, and its numerics drift from the trainer's.
"""

from __future__ import annotations

from titan_conformance.checks.result import CheckResult
from titan_conformance.compilation.ledger import CompileLedger

GENERATOR_ROLES = ("generator.", "vllm.")


def compile_config_verdict(ledger: CompileLedger) -> CheckResult | None:
    """None when the ledger holds no trainer or no generator region with recorded settings."""
    trainer = {r: s for r, s in ledger.settings.items() if r.startswith("trainer.")}
    generator = {r: s for r, s in ledger.settings.items() if r.startswith(GENERATOR_ROLES)}
    if not trainer or not generator:
        return None
    metrics = {"settings": dict(ledger.settings)}
    (t_region, t_settings), = trainer.items()
    causes = []
    for region, settings in generator.items():
        differ = {k: (t_settings.get(k), v) for k, v in settings.items() if t_settings.get(k) != v}
        if differ:
            causes.append(f"{region} vs {t_region}: " + ", ".join(f"{k} {g!r} vs {t!r}" for k, (t, g) in differ.items()))
    if not causes:
        return CheckResult("compile_config", True, f"trainer and generator compiled alike: {t_settings}", metrics)
    return CheckResult(
        "compile_config", False,
        "The generator's blocks are compiled differently from the trainer's (" + "; ".join(causes)
        + "): they do not run the same compiled model. Compile both from one CompileConfig.",
        metrics,
    )
