"""Conformance profiles (suites/*.toml): the system to build, with its tolerances and budgets.

Every section is a typed dataclass; loading rejects unknown keys, wrong types and impossible
values with the key's dotted name and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from titan_conformance.compilation.config import CUDAGRAPH_MODES, INDUCTOR_MODES, CompileConfig
from titan_conformance.data_files import data_dir
from titan_conformance.device_class import DEVICE_CLASS_NAME
from titan_conformance.errors import ConformanceError
from titan_conformance.generator.capture_sizes import MODES, policy_capture_sizes
from titan_conformance.model.args import ModelArgs
from titan_conformance.trainer.grpo import GRPOConfig

DTYPES = ("float32", "bfloat16")
MAX_STEPS = 10_000
"""Most GRPO steps a profile may ask for: a conformance run, not a training run."""
BACKENDS = ("native", "vllm")


@dataclass(frozen=True)
class ModelSection:
    """Which weights to build the model from."""

    checkpoint: str = "fixture:tiny-qwen3"
    """HF checkpoint directory, `fixture:NAME` for one shipped with the package, or "random" for
    seeded random weights of the shape in `config` (no hub is reachable from CI or GPU runners)."""
    config: dict = field(default_factory=dict)
    """HF config.json keys of the architecture, used when checkpoint = "random"."""
    dtype: str = "float32"
    """Parameter and activation dtype of trainer and generator: float32 or bfloat16."""
    warmup_steps: int = 0
    """Supervised steps on the toy task after the weights load, before the run, on the device the
    system runs on (startup phase `warmup`, outside the startup budget): random weights sample
    near-uniformly over the vocabulary, so every completion would run to max_tokens and earn the
    same zero reward, a GRPO step would change nothing a check can see, and a generator that
    computes another model would give the same parity statistics. Required (>= 1) with
    checkpoint = "random"."""
    warmup_lr: float = 2e-3
    """AdamW learning rate of the warm-up."""
    warmup_batch: int = 16
    """Demonstrations per warm-up step."""


@dataclass(frozen=True)
class SamplingSection:
    """How the generator samples rollouts."""

    num_prompts_per_step: int = 8
    """Prompts drawn per GRPO step."""
    n: int = 8
    """Samples per prompt (the GRPO group size)."""
    temperature: float = 1.0
    """Sampling temperature; logprobs are compared at this temperature. 0 is greedy."""
    max_tokens: int = 12
    """Most tokens generated per completion."""


@dataclass(frozen=True)
class GeneratorSection:
    """The generator engine."""

    backend: str = "native"
    """Generator backend: native (ours, static KV cache) or vllm (vLLM's engine on our model)."""
    max_num_seqs: int = 0
    """Largest decode batch; 0 derives it as num_prompts_per_step x n."""
    max_model_len: int = 32
    """KV-cache length per sequence (prompt + completion)."""


@dataclass(frozen=True)
class CUDAGraphSection:
    """CUDA graphs of the generator's decode step (CUDA only; ignored on CPU)."""

    mode: str = "FULL"
    """NONE, FULL or FULL_DECODE_ONLY: the whole decode step captured as one graph per size."""
    sizes: list | None = None
    """Explicit capture sizes; left out, the policy derives them (powers of 2 up to the cap, plus
    max_num_seqs and the cap)."""
    max_capture_size: int = 0
    """The policy's cap; 0 means max_num_seqs (all that decode-only graphs need)."""
    replay_max_abs: float = 0.0
    """Allowed |graph replay - the same compiled step without a graph|; 0 demands exact equality."""


@dataclass(frozen=True)
class ValidationSection:
    """The fixed validation run before and after training."""

    size: int = 64
    """Number of validation prompts."""
    temperature: float = 0.0
    """Sampling temperature for validation (0: greedy). Seeded, so pre and post compare alike."""


@dataclass(frozen=True)
class ParallelSection:
    """Parallelism of trainer and generator."""

    tp: int = 1
    """Tensor-parallel degree of trainer and generator; must divide the query and key/value head
    counts. TP > 1 runs in a process group of that many ranks (gloo on CPU, NCCL on CUDA)."""
    unwrap_async: bool = True
    """Resolve AsyncCollectiveTensor block inputs (a RowwiseParallel output not yet waited on) to
    plain Tensors before each compiled block. Off, block 0 sees an AsyncCollectiveTensor and the
    others a Tensor: one compiled graph per type, and on torch 2.13 a backward through the
    AsyncCollectiveTensor-traced graph fails with Inductor or aot_eager."""


@dataclass(frozen=True)
class TorchtitanSection:
    """The model of the torchtitan provider (`--tc-system torchtitan`); other providers ignore it."""

    flavor: str = ""
    """A Qwen3 flavor of torchtitan's model registry (`debugmodel`, `0.6B`, ...); empty: the profile
    is not meant for the torchtitan provider. With checkpoint = "random" the weights come from
    torchtitan's own init; a checkpoint must be an HF-layout one of this flavor's shape."""


@dataclass(frozen=True)
class RunSection:
    """The GRPO run the suite performs before checking."""

    steps: int = 20
    """GRPO steps (each with its own prompt and completion lengths)."""
    expect_learning: bool = True
    """Whether validation reward must rise over the run (False for random-weight profiles)."""


@dataclass(frozen=True)
class FloorRatio:
    """How far trainer and generator may be from a float64 oracle of the same weights, in multiples
    of the precision floor: the distance of an eager copy of the model at the profile's dtype (same
    weights, same tokens) to that oracle. Per statistic of |side - oracle| over the sampled tokens."""

    mean_abs: float = 4.0
    """Largest mean |diff| ratio."""
    p99_abs: float = 4.0
    """Largest p99 |diff| ratio."""
    k3_kl: float = 16.0
    """Largest k3-KL ratio (a second moment: about the square of the others)."""
    pair_mean_abs: float = 4.0
    """Largest mean |trainer - generator| over the floor's mean |diff|: the mismatch itself in units
    of the rounding floor (in bf16 trainer and generator round alike, so this sees what their
    distances to the oracle, each dominated by rounding, do not)."""


@dataclass(frozen=True)
class Tolerance:
    """Allowed trainer-vs-generator logprob differences for one dtype."""

    max_abs: float = 1e-4
    """Largest |trainer - generator| logprob of any sampled token."""
    p99_abs: float = 1e-5
    """99th percentile of |diff|."""
    mean_abs: float = 1e-6
    """Mean |diff|."""
    batch_invariance_max_abs: float = 1e-5
    """Largest change of a trainer logprob when the same sequence sits in another batch."""
    floor: FloorRatio = field(default_factory=FloorRatio)
    """Trainer and generator against the float64 oracle, relative to the precision floor."""


@dataclass(frozen=True)
class Tolerances:
    """Parity tolerances per dtype, and the bitwise mode."""

    bitwise: bool = False
    """Require exact equality (fp32 and deterministic settings), whatever the tolerances say."""
    min_tokens: int = 64
    """Fewest sampled tokens a parity verdict must compare; fewer is a failure, not a pass."""
    float32: Tolerance = field(default_factory=Tolerance)
    bfloat16: Tolerance = field(
        default_factory=lambda: Tolerance(max_abs=0.5, p99_abs=0.1, mean_abs=0.02, batch_invariance_max_abs=0.1)
    )


@dataclass(frozen=True)
class SpeedSection:
    """Speed judged by ratios measured within one run, which hold on noisy shared machines where
    absolute budgets cannot (those are per device class, `Budget`)."""

    generate_overhead: float = 4.0
    """Largest median, over the run's steps, of (generate seconds / decode steps) over one bare
    decode step at the step's batch (a graph replay on CUDA, the compiled step elsewhere) timed
    right after the step: host-side stalls, extra syncs, a lost graph or a slow path show as a
    ratio over this. The prefill and the host's bookkeeping make a healthy run's ratio 1.3-2.5."""


@dataclass(frozen=True)
class Budget:
    """Time budgets of one device class, in seconds; an unset entry is not checked."""

    build: float | None = None
    """Model construction (both roles)."""
    weight_load: float | None = None
    """Checkpoint load into the trainer and first sync into the generator."""
    warmup: float | None = None
    """The supervised warm-up of a random checkpoint (`model.warmup_steps`); not part of `startup`."""
    compile: float | None = None
    """Regional compile and warm-up of every shape class (trainer fwd+bwd, prefill, decode)."""
    capture: float | None = None
    """FULL CUDA-graph capture of every capture size (0 on CPU)."""
    first_generate: float | None = None
    """The first real rollout batch after compile."""
    startup: float | None = None
    """All startup phases together, the warm-up left out (a real checkpoint needs none)."""
    generate: float | None = None
    """Median rollout time of a GRPO step."""
    train: float | None = None
    """Median trainer step time."""
    weight_sync: float | None = None
    """Median trainer-to-generator weight sync time."""
    step: float | None = None
    """Median whole GRPO step time."""


@dataclass(frozen=True)
class Profile:
    """A whole conformance profile."""

    name: str = "unnamed"
    """Profile name (the file's stem)."""
    description: str = ""
    """What the profile is for."""
    seed: int = 0
    """Seed of prompt draws and sampling."""
    model: ModelSection = field(default_factory=ModelSection)
    compile: CompileConfig = field(default_factory=CompileConfig)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    generator: GeneratorSection = field(default_factory=GeneratorSection)
    cudagraph: CUDAGraphSection = field(default_factory=CUDAGraphSection)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    validation: ValidationSection = field(default_factory=ValidationSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    torchtitan: TorchtitanSection = field(default_factory=TorchtitanSection)
    run: RunSection = field(default_factory=RunSection)
    tolerances: Tolerances = field(default_factory=Tolerances)
    speed: SpeedSection = field(default_factory=SpeedSection)
    budgets: dict[str, Budget] = field(default_factory=dict)
    """Time budgets per device class: `cpu`, or a GPU's model as `device_class.gpu_class` names it
    (h100, h200, a100, b200, l40s, mi300x, ...): `[budgets.h100]`."""

    @property
    def max_num_seqs(self) -> int:
        return self.generator.max_num_seqs or self.sampling.num_prompts_per_step * self.sampling.n

    @property
    def capture_sizes(self) -> list[int]:
        """What the capture-size policy yields for this profile ([] in mode NONE)."""
        g = self.cudagraph
        if g.mode == "NONE":
            return []
        return policy_capture_sizes(self.max_num_seqs, g.max_capture_size, g.sizes)


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation) if a is not type(None))
    return isinstance(value, annotation)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConformanceError(f"Profile key {where!r} must be a table, got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConformanceError(
                f"Unknown profile key {dotted!r}; allowed here: {', '.join(sorted(fields))}."
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, dotted)
        elif typing.get_origin(hint) is dict:  # a table of tables ([budgets.h100]) or of values
            if not isinstance(value, dict):
                raise ConformanceError(f"Profile key {dotted!r} must be a table, got {value!r}.")
            item = typing.get_args(hint)[1]
            if dataclasses.is_dataclass(item):
                kwargs[key] = {name: _build(item, table, f"{dotted}.{name}") for name, table in value.items()}
                continue
            for name, entry in value.items():
                if not _type_ok(entry, item):
                    raise ConformanceError(f"Profile key '{dotted}.{name}' must be {item.__name__}, got {entry!r}.")
            kwargs[key] = dict(value)
        elif not _type_ok(value, hint):
            raise ConformanceError(
                f"Profile key {dotted!r} must be {getattr(hint, '__name__', hint)}, got {value!r}."
            )
        else:
            kwargs[key] = float(value) if hint is float else value
    return cls(**kwargs)


def _check(profile: Profile) -> None:
    s, g = profile.sampling, profile.generator
    rules = [
        (profile.model.dtype in DTYPES, "model.dtype", f"one of {DTYPES}"),
        (profile.model.checkpoint != "random" or bool(profile.model.config) or bool(profile.torchtitan.flavor),
         "model.config", "a table of HF config keys when checkpoint = \"random\" (or set torchtitan.flavor)"),
        (profile.parallel.tp >= 1, "parallel.tp", ">= 1"),
        (profile.model.warmup_steps >= 0, "model.warmup_steps", ">= 0"),
        (profile.model.warmup_steps >= 1 or profile.model.checkpoint != "random", "model.warmup_steps",
         ">= 1 with checkpoint = \"random\" (random weights sample near-uniformly: nothing a check compares "
         "would differ between a healthy and a broken system)"),
        (profile.model.warmup_lr > 0, "model.warmup_lr", "> 0"),
        (profile.model.warmup_batch >= 1, "model.warmup_batch", ">= 1"),
        (1 <= profile.run.steps <= MAX_STEPS, "run.steps", f"from 1 to {MAX_STEPS} (--tc-timeout bounds a run's time)"),
        (s.num_prompts_per_step >= 1, "sampling.num_prompts_per_step", ">= 1"),
        (s.n >= 2, "sampling.n", ">= 2 (GRPO normalizes advantages within a group)"),
        (s.temperature >= 0, "sampling.temperature", ">= 0"),
        (s.max_tokens >= 1, "sampling.max_tokens", ">= 1"),
        (g.backend in BACKENDS, "generator.backend", f"one of {BACKENDS}"),
        (profile.cudagraph.mode in MODES, "cudagraph.mode", f"one of {MODES}"),
        (profile.cudagraph.max_capture_size >= 0, "cudagraph.max_capture_size", ">= 0 (0: max_num_seqs)"),
        (profile.cudagraph.replay_max_abs >= 0, "cudagraph.replay_max_abs", ">= 0 (0: exact)"),
        (g.max_num_seqs >= 0, "generator.max_num_seqs", ">= 1, or 0 to derive it"),
        (profile.max_num_seqs >= s.num_prompts_per_step * s.n, "generator.max_num_seqs",
         f">= num_prompts_per_step x n = {s.num_prompts_per_step * s.n}"),
        (g.max_model_len > s.max_tokens, "generator.max_model_len", "> sampling.max_tokens"),
        (profile.compile.recompile_limit >= 1, "compile.recompile_limit", ">= 1"),
        (all(n >= 1 for n in profile.compile.max_compiles.values()), "compile.max_compiles",
         "a table of roles (trainer, generator, vllm) to counts >= 1"),
        (profile.grpo.lr > 0, "grpo.lr", "> 0"),
        (profile.grpo.clip_eps > 0, "grpo.clip_eps", "> 0"),
        (profile.grpo.kl_coef >= 0, "grpo.kl_coef", ">= 0"),
        (profile.grpo.max_grad_norm > 0, "grpo.max_grad_norm", "> 0"),
        (profile.validation.size >= 1, "validation.size", ">= 1"),
        (profile.validation.temperature >= 0, "validation.temperature", ">= 0"),
        (profile.tolerances.min_tokens >= 1, "tolerances.min_tokens", ">= 1"),
        (profile.speed.generate_overhead >= 1 or profile.speed.generate_overhead == 0, "speed.generate_overhead",
         ">= 1 (a ratio to the bare decode step), or 0 to not check it"),
    ]
    for ok, key, allowed in rules:
        if not ok:
            raise ConformanceError(f"Profile {profile.name!r}: {key} is invalid; it must be {allowed}.")
    for cls in profile.budgets:
        if not DEVICE_CLASS_NAME.fullmatch(cls):
            raise ConformanceError(
                f"Profile {profile.name!r}: [budgets.{cls}] is not a device class; name it cpu or the GPU's "
                "model in lower case (h100, a100, rtx4090, mi300x), as the report's device_class shows it."
            )
    tables = {}
    for dtype in DTYPES:
        tol = getattr(profile.tolerances, dtype)
        tables[f"tolerances.{dtype}"] = {k: v for k, v in dataclasses.asdict(tol).items() if k != "floor"}
        tables[f"tolerances.{dtype}.floor"] = dataclasses.asdict(tol.floor)
    tables.update({f"budgets.{cls}": dataclasses.asdict(budget) for cls, budget in profile.budgets.items()})
    for section, table in tables.items():
        for key, value in table.items():
            if value is None:
                continue
            if math.isnan(value) or value < 0:
                what = "not a number" if math.isnan(value) else "negative"
                raise ConformanceError(
                    f"Profile {profile.name!r}: {section}.{key} = {value} is {what}; it must be >= 0."
                )
            if math.isinf(value):
                raise ConformanceError(
                    f"Profile {profile.name!r}: {section}.{key} is infinite; leave the key out to not check it."
                )
    _check_compile(profile)
    try:
        policy_capture_sizes(profile.max_num_seqs, profile.cudagraph.max_capture_size, profile.cudagraph.sizes)
    except ConformanceError as e:
        raise ConformanceError(f"Profile {profile.name!r}: {e}") from None
    if profile.model.checkpoint == "random" and profile.model.config:
        heads = ModelArgs.from_hf_config(profile.model.config, source=f"profile {profile.name!r} model.config")
        check_tp(heads, profile.parallel.tp, f"profile {profile.name!r}")


def _check_compile(profile: Profile) -> None:
    """compile.backend is one torch knows; mode and options are Inductor's, one or the other, and
    known to this torch's Inductor."""
    c, where = profile.compile, f"Profile {profile.name!r}"
    if not c.enable:
        return
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if c.backend not in known:
        raise ConformanceError(
            f"{where}: compile.backend = {c.backend!r} is not a torch.compile backend this torch "
            f"({torch.__version__}) knows; use one of {', '.join(known)} (inductor for the real thing)."
        )
    if c.mode is None and not c.options:
        return
    if c.backend != "inductor":
        raise ConformanceError(
            f"{where}: compile.mode and compile.options are Inductor's, but compile.backend = {c.backend!r}; "
            "set backend = \"inductor\" or leave them out."
        )
    if c.mode is not None and c.options:
        raise ConformanceError(f"{where}: set compile.mode or compile.options, not both (torch.compile takes one).")
    if c.mode is not None and c.mode not in INDUCTOR_MODES:
        raise ConformanceError(f"{where}: compile.mode = {c.mode!r} is not one of {', '.join(INDUCTOR_MODES)}.")
    if c.mode in CUDAGRAPH_MODES and profile.cudagraph.mode != "NONE":
        raise ConformanceError(
            f"{where}: compile.mode = {c.mode!r} captures Inductor's own CUDA graphs inside the generator's FULL "
            "decode graphs (cudagraph.mode); use max-autotune-no-cudagraphs, or cudagraph.mode = \"NONE\"."
        )
    if c.options:
        try:
            torch._TorchCompileInductorWrapper(None, dict(c.options), c.dynamic)
        except RuntimeError as e:
            raise ConformanceError(f"{where}: compile.options: {str(e)[:160]}.") from None


def check_tp(args: ModelArgs, tp: int, where: str) -> None:
    """TP shards attention by heads: the degree must divide both head counts."""
    if args.n_heads % tp or args.n_kv_heads % tp:
        raise ConformanceError(
            f"{where}: parallel.tp = {tp} does not divide num_attention_heads = {args.n_heads} and "
            f"num_key_value_heads = {args.n_kv_heads}; choose a TP degree that divides both."
        )


def bundled_profiles() -> dict[str, Path]:
    return {p.stem: p for p in sorted(data_dir("suites").glob("*.toml"))}


def _read_profile(name_or_path: str) -> tuple[Path, dict]:
    bundled = bundled_profiles()
    path = bundled.get(name_or_path) or Path(name_or_path)
    if not path.is_file():
        raise ConformanceError(
            f"No profile {name_or_path!r}: not a bundled profile ({', '.join(sorted(bundled))}) "
            "and not a TOML file path."
        )
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConformanceError(f"Profile {path} is not valid TOML ({e}).") from None
    data.setdefault("name", path.stem)
    return path, data


def _merged(base: dict, override: dict) -> dict:
    """`override` over `base`, table by table (a value replaces, a table merges)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def profile_variants(name_or_path: str) -> list[str]:
    """The names of the variants a profile declares (`[variants.NAME]` tables), in file order."""
    _, data = _read_profile(name_or_path)
    return list(data.get("variants") or {})


def load_profile(name_or_path: str, variant: str | None = None) -> Profile:
    """A bundled profile name (e.g. `tiny-cpu`) or a path to a TOML file; with `variant`, that
    `[variants.NAME]` table of it merged over the rest (its profile is named `base[NAME]`)."""
    path, data = _read_profile(name_or_path)
    variants = data.pop("variants", {})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ConformanceError(f"Profile {path}: [variants] must hold one table per variant, e.g. [variants.fp32].")
    for name, override in variants.items():
        if "name" in override or "variants" in override:
            raise ConformanceError(f"Profile {data['name']!r}: variants.{name} cannot set name or variants.")
        _build(Profile, override, f"variants.{name}")  # unknown keys and wrong types, named in the variant
    if variant:
        if variant not in variants:
            raise ConformanceError(
                f"Profile {data['name']!r} has no variant {variant!r}; it has {', '.join(variants) or 'none'}."
            )
        data = _merged(data, variants[variant])
        data["name"] = f"{data['name']}[{variant}]"
    profile = _build(Profile, data, "")
    _check(profile)
    return profile
