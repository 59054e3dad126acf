"""The one compile config shared by trainer and generator."""

from __future__ import annotations

from dataclasses import dataclass, field

INDUCTOR_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile's modes (Inductor only)."""
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
"""Modes in which Inductor captures CUDA graphs of its own."""


@dataclass(frozen=True, kw_only=True)
class CompileConfig:
    """How each TransformerBlock is compiled (torchtitan's regional compile)."""

    enable: bool = True
    """Compile each block on its own; False runs the model eagerly."""
    backend: str = "inductor"
    """torch.compile backend name ("inductor", "aot_eager", "eager", ...)."""
    mode: str | None = None
    """torch.compile's `mode` (Inductor only): default, max-autotune-no-cudagraphs, ... None is the
    default. The modes that capture Inductor's own CUDA graphs (reduce-overhead, max-autotune) are
    refused where the generator captures its FULL decode graphs."""
    options: dict = field(default_factory=dict)
    """torch.compile's `options` (Inductor only): Inductor config patches, e.g.
    `{ coordinate_descent_tuning = true }`. Not together with `mode` (torch.compile takes one)."""
    fullgraph: bool = True
    """Fail on graph breaks instead of splitting the block (torchtitan compiles with fullgraph)."""
    dynamic: bool | None = True
    """torch.compile's `dynamic`: True marks batch and sequence dims dynamic up front, None lets
    Dynamo specialize first and go dynamic on the first shape change (one extra compile)."""
    warm_start: bool = True
    """Native generator on CUDA: from build on, while weights load, start Inductor's compile workers
    and import its compiler, and compile our own Triton kernels in the background (`warm_start.py`);
    False leaves all of it to the first compile and launch. The vLLM and torchtitan paths ignore it."""
    recompile_limit: int = 8
    """Dynamo's per-code-object recompile limit; past it a region falls back to eager (or, under
    fullgraph, raises). The recompile-budget check holds every region under it."""
    max_compiles: dict[str, int] = field(default_factory=dict)
    """Per role (trainer, generator, vllm): the most compilations of its region over a run that the
    recompile-budget check allows, e.g. `{ generator = 1 }` (one graph for prefill, decode and every
    batch size). A count that CI checks without a GPU, where startup budgets are times; roles not
    named are held to recompile_limit alone. Dynamo itself never sees it."""
    zero_compiles_after_startup: bool = False
    """Nothing may compile once the timed startup is over, in any role: a compile during the run (a
    validation, a GRPO step, the decode timing probe after one) fails the recompile-budget check,
    naming its region, guard failure and step, as vLLM's `fail_on_recompile` stance after its
    warm-up would fail the call. Startup must compile every shape class and dtype the steps use.
    On in the bundled profiles; a profile that leaves it out only counts such compiles. Dynamo
    itself never sees it (the run goes on, so every other check still judges it)."""

    def settings(self) -> dict:
        """What torch.compile is given for each block: the settings a role's region is compared by."""
        if not self.enable:
            return {"enable": False}
        return {
            "enable": True, "backend": self.backend, "mode": self.mode or "default", "options": dict(self.options),
            "fullgraph": self.fullgraph, "dynamic": self.dynamic,
        }
