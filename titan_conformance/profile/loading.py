"""Loading conformance profiles (suites/*.toml) and their variants into `sections.Profile`.

Loading rejects unknown keys, wrong types and impossible values with the key's dotted name and
what is allowed; a Literal field takes one of its values, an enum field one of its members' names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import enum
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from titan_conformance.data_files import data_dir
from titan_conformance.device_class import DEVICE_CLASS_NAME
from titan_conformance.errors import ConformanceError
from titan_conformance.profile.compile_config import CUDAGRAPH_MODES, INDUCTOR_MODES
from titan_conformance.profile.cudagraph import policy_capture_sizes
from titan_conformance.profile.sections import Dtype, Profile

DTYPES = typing.get_args(Dtype)
MAX_STEPS = 10_000
"""Most GRPO steps a profile may ask for: a conformance run, not a training run."""


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    return getattr(annotation, "__name__", str(annotation))


def _type_ok(value: Any, annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Literal:
        return value in typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return value in {m.value for m in annotation}
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
                    raise ConformanceError(f"Profile key '{dotted}.{name}' must be {_type_name(item)}, got {entry!r}.")
            kwargs[key] = dict(value)
        elif not _type_ok(value, hint):
            raise ConformanceError(f"Profile key {dotted!r} must be {_type_name(hint)}, got {value!r}.")
        elif isinstance(hint, type) and issubclass(hint, enum.Enum):
            kwargs[key] = hint(value)
        else:
            kwargs[key] = float(value) if hint is float else value
    return cls(**kwargs)


MAX_SEED = 2**32
"""Seeds stay below 2**32: rollout seeds are derived from it by arithmetic (`seed * 100_003 + i`)
and must still fit every RNG's 64-bit seed."""


def _check(profile: Profile) -> None:
    s, g = profile.sampling, profile.generator
    rules = [
        (0 <= profile.seed < MAX_SEED, "seed", f"from 0 to {MAX_SEED - 1} (torch, vLLM and Python's RNGs all take it)"),
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
        (0 < s.top_p <= 1, "sampling.top_p", "in (0, 1] (1: off; top-p keeps the smallest set of tokens whose "
         "probability reaches it)"),
        (s.top_k >= 0, "sampling.top_k", "0 (off) or >= 1 (the number of most probable tokens kept)"),
        (s.max_tokens >= 1, "sampling.max_tokens", ">= 1"),
        (profile.cudagraph.max_capture_size >= 0, "cudagraph.max_capture_size", ">= 0 (0: max_num_seqs)"),
        (profile.cudagraph.replay_max_abs >= 0, "cudagraph.replay_max_abs", ">= 0 (0: exact)"),
        (g.max_num_seqs >= 0, "generator.max_num_seqs", ">= 1, or 0 to derive it"),
        (profile.max_num_seqs >= profile.rollouts_per_step, "generator.max_num_seqs",
         f">= num_prompts_per_step x n = {profile.rollouts_per_step}"),
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
        check_tp(profile.model.config, profile.parallel.tp, f"profile {profile.name!r}")


def _check_compile(profile: Profile) -> None:
    """compile.backend is one torch knows; mode and options are Inductor's, one or the other, and
    known to this torch's Inductor."""
    c, where = profile.compile, f"Profile {profile.name!r}"
    if not c.enable:
        return
    import torch

    # torch.compile builds Inductor's wrapper for "inductor" without Dynamo's registry; importing
    # Dynamo to list the others is seconds of the controller's start-up, so only other names pay it.
    if c.backend != "inductor" and c.backend not in (known := _registered_backends()):
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
    if c.mode in CUDAGRAPH_MODES and profile.cudagraph.mode.captures:
        raise ConformanceError(
            f"{where}: compile.mode = {c.mode!r} captures Inductor's own CUDA graphs inside the generator's FULL "
            "decode graphs (cudagraph.mode); use max-autotune-no-cudagraphs, or cudagraph.mode = \"NONE\"."
        )
    if c.options:
        try:
            torch._TorchCompileInductorWrapper(None, dict(c.options), c.dynamic)
        except RuntimeError as e:
            raise ConformanceError(f"{where}: compile.options: {str(e)[:160]}.") from None


def _registered_backends() -> list[str]:
    import torch._dynamo

    return torch._dynamo.list_backends(exclude_tags=())


def check_tp(hf_config: dict, tp: int, where: str) -> None:
    """TP shards attention by heads: the degree must divide both head counts of an HF config."""
    heads = hf_config.get("num_attention_heads")
    kv_heads = hf_config.get("num_key_value_heads", heads)
    if isinstance(heads, int) and isinstance(kv_heads, int) and (heads % tp or kv_heads % tp):
        raise ConformanceError(
            f"{where}: parallel.tp = {tp} does not divide num_attention_heads = {heads} and "
            f"num_key_value_heads = {kv_heads}; choose a TP degree that divides both."
        )


def bundled_profiles() -> dict[str, Path]:
    return {p.stem: p for p in sorted(data_dir("suites").glob("*.toml"))}


def _read_profile(name_or_path: str, relative_to: Path | None = None) -> tuple[Path, dict]:
    """A bundled name, or a TOML path; a relative path named inside a profile (`relative_to`, that
    profile's folder) is read from beside it, wherever the suite runs from."""
    bundled = bundled_profiles()
    path = bundled.get(name_or_path) or Path(name_or_path)
    if name_or_path not in bundled and relative_to is not None and not path.is_absolute():
        path = relative_to / path
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


VARIANT_KEYS = {
    "system": "the provider that builds the variant (module:factory or an entry-point name)",
    "base": "a profile (bundled name or TOML path) the variant starts from instead of this one",
}
"""Keys a `[variants.NAME]` table may hold besides profile overrides."""

VARIANT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
"""A variant's name is a test id, a report key and a compile-cache file suffix: plain ASCII only."""


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One system of a suite: its base profile, or one `[variants.NAME]` of it."""

    name: str
    """`base`, or the variant's name: the `[name]` of its test ids."""
    profile: Profile
    """The profile the variant runs."""
    system: str | None = None
    """The provider that builds it; None: the session's (--tc-system)."""


def _variant_tables(path: Path, data: dict) -> dict[str, dict]:
    """The profile's `[variants.*]` tables (popped from `data`), each checked: known keys, right types."""
    variants = data.pop("variants", {})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ConformanceError(f"Profile {path}: [variants] must hold one table per variant, e.g. [variants.fp32].")
    for name, table in variants.items():
        if not VARIANT_NAME.fullmatch(name):
            raise ConformanceError(
                f"Profile {data['name']!r}: variant name {name!r} is not allowed. A variant's name becomes its test "
                "ids, its report entries and its compile-cache file's suffix, so it is 1-64 ASCII letters, digits, "
                "'_', '-' or '.', not starting with '-' or '.' (e.g. [variants.bf16-no-graphs])."
            )
        if name == "base" or "name" in table or "variants" in table:
            raise ConformanceError(
                f"Profile {data['name']!r}: variants.{name} cannot be named `base` nor set name or variants."
            )
        for key, what in VARIANT_KEYS.items():
            if key in table and not isinstance(table[key], str):
                raise ConformanceError(f"Profile key 'variants.{name}.{key}' must be a string: {what}.")
        if "base" in table:
            _read_profile(table["base"], path.parent)  # names a profile that exists
        _build(Profile, {k: v for k, v in table.items() if k not in VARIANT_KEYS}, f"variants.{name}")
    return variants


def profile_variants(name_or_path: str) -> list[str]:
    """The names of the variants a profile declares (`[variants.NAME]` tables), in file order."""
    path, data = _read_profile(name_or_path)
    return list(_variant_tables(path, data))


def load_profile(name_or_path: str, variant: str | None = None) -> Profile:
    """A bundled profile name (e.g. `tiny-cpu`) or a path to a TOML file; with `variant`, that
    `[variants.NAME]` table of it merged over the rest, or over its `base` profile (the result is
    named `profile[NAME]`)."""
    path, data = _read_profile(name_or_path)
    variants = _variant_tables(path, data)
    if variant:
        if variant not in variants:
            raise ConformanceError(
                f"Profile {data['name']!r} has no variant {variant!r}; it has {', '.join(variants) or 'none'}."
            )
        table, name = variants[variant], data["name"]
        if "base" in table:
            base_path, data = _read_profile(table["base"], path.parent)
            _variant_tables(base_path, data)
        data = _merged(data, {k: v for k, v in table.items() if k not in VARIANT_KEYS})
        data["name"] = f"{name}[{variant}]"
    profile = _build(Profile, data, "")
    _check(profile)
    return profile


def suite_variants(name_or_path: str) -> list[Variant]:
    """The suite a profile declares: its base, then each of its variants, in file order."""
    path, data = _read_profile(name_or_path)
    tables = _variant_tables(path, data)
    return [Variant(name="base", profile=load_profile(name_or_path))] + [
        Variant(name=name, profile=load_profile(name_or_path, name), system=table.get("system"))
        for name, table in tables.items()
    ]
