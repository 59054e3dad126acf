"""The suite's inputs, checked once before anything is built: a bad one is a usage error (pytest's
exit 4, one paragraph, printed once), never a FAIL per check, and never found only after a build.

What cannot be known before building (a checkpoint whose tensors are corrupt, a provider that
raises) becomes a single failed build in the report instead (`build.py`).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from titan_conformance.errors import ConformanceError

GENERATORS = ("native", "vllm", "auto")
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True, kw_only=True)
class SuiteOptions:
    """The `--tc-*` options of a session."""

    suite: str
    """Profile name or TOML path."""
    model_path: str | None = None
    """HF checkpoint directory overriding the profile's."""
    generator: str = "auto"
    """--tc-generator: native or vllm force that backend on every variant; auto keeps each
    variant's, except that vLLM (where it imports) replaces the native generator of a suite
    that declares no vLLM variant, on the providers that drive vLLM."""
    variants: tuple[str, ...] = ()
    """Variants to run (--tc-variant; `base` is the profile itself); empty: all of them."""
    device: str = "auto"
    """cpu, cuda or auto."""
    system: str | None = None
    """Provider: module:factory or an entry-point name (None: ours)."""
    seed: int | None = None
    """Overrides the profile's seed."""
    report_dir: str | None = None
    """Where the report goes (None: ./reports/<timestamp>-<profile>/)."""
    compile_cache: str | None = None
    """A compile-cache file kept between runs."""
    timeout: float | None = None
    """Seconds after which the session stops with a partial report."""


def _drives_vllm(system: str | None) -> bool:
    from titan_conformance.protocol import load_factory

    return "vllm" in getattr(load_factory(system), "generators", ("native", "vllm"))


def suite_variants(options: SuiteOptions) -> list[Any]:
    """The variants the session runs (`profile.Variant`), with the options' overrides applied:
    the generator backend (see `SuiteOptions.generator`), the seed, and --tc-variant's selection."""
    from titan_conformance.profile import suite_variants as declared
    from titan_conformance.vllm_support import vllm_version

    variants = declared(options.suite)
    has_vllm_variant = any(v.profile.generator.backend == "vllm" for v in variants)
    if options.variants:
        names = [v.name for v in variants]
        if unknown := [n for n in options.variants if n not in names]:
            raise ConformanceError(
                f"--tc-variant {','.join(unknown)}: suite {options.suite!r} has no such variant; it has "
                f"{', '.join(names)}."
            )
        variants = [v for v in variants if v.name in options.variants]
    out = []
    for v in variants:
        profile, system = v.profile, v.system or options.system
        backend = options.generator
        if backend == "auto":
            auto_vllm = not has_vllm_variant and vllm_version() is not None and _drives_vllm(system)
            backend = "vllm" if auto_vllm else None
        if backend:
            profile = dataclasses.replace(profile, generator=dataclasses.replace(profile.generator, backend=backend))
        if options.seed is not None:
            profile = dataclasses.replace(profile, seed=options.seed)
        out.append(dataclasses.replace(v, profile=profile, system=system))
    return out


MAX_TIMEOUT = 7 * 24 * 3600.0
"""--tc-timeout's largest value in seconds (a week: the interval timer takes no more)."""


def variant_unavailable(variant: Any, gpus: int | None) -> str | None:
    """Why `variant` cannot run in this process, or None: its generator or provider is not
    installed here, or it needs more GPUs than the worker holds (`gpus`: None off CUDA). A
    dependency that is installed but broken is not this: the build fails, naming the import."""
    from titan_conformance.protocol import load_factory
    from titan_conformance.vllm_support import INSTALL_HINT, vllm_version

    profile, tp = variant.profile, variant.profile.parallel.tp
    if profile.generator.backend == "vllm" and vllm_version() is None:
        return f"variant {variant.name!r} runs the vLLM generator, which does not import here. {INSTALL_HINT}"
    factory = load_factory(variant.system)
    if (why := getattr(factory, "unavailable", lambda: None)()) is not None:
        return f"variant {variant.name!r} needs the {variant.system or 'reference'} provider: {why}"
    if gpus is not None and gpus < tp:
        return f"variant {variant.name!r} needs {tp} GPU(s) (parallel.tp = {tp}); this worker holds {gpus}"
    return None


def named(variant: Any, options: SuiteOptions) -> bool:
    """Whether the user asked for `variant` (the suite's base: its profile, its backend, the
    --tc-system it runs; or a --tc-variant), rather than it being an optional member of the suite.
    Only an optional variant whose dependency is absent may skip."""
    return variant.name == "base" and not options.variants or variant.name in options.variants


def check_factory(factory: Callable[..., Any], spec: str) -> None:
    """A provider factory takes `(profile, device=..., model_path=...)`."""
    try:
        inspect.signature(factory).bind(object(), device="cpu", model_path=None)
    except TypeError as e:
        raise ConformanceError(
            f"System provider {spec!r} is not a factory: {getattr(factory, '__qualname__', factory)} cannot be "
            f"called as factory(profile, device=..., model_path=...) ({e}). Point --tc-system at a function "
            "that builds your system from a profile (see titan_conformance.protocol)."
        ) from None
    except ValueError:  # a builtin without a signature: it is called, and a failure becomes a failed build
        pass


def writable_dir(path: Path, what: str) -> Path:
    """`path` created if missing and shown writable by writing a file there, else a usage error."""
    if path.exists() and not path.is_dir():
        raise ConformanceError(f"{what} {path} is a file, not a folder; pass a folder (it is created if missing).")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".tc-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConformanceError(
            f"{what} {path} is not writable ({e.strerror or e}); pass a writable folder with --tc-report-dir."
        ) from None
    return path


def check_inputs(options: SuiteOptions, report_dir: Path, gpus: int | None = None) -> list[Any]:
    """The session's variants, after every input was checked: the profile and its variants, each
    variant's checkpoint (its config, the TP degree against its heads) and provider, that every
    variant the user named can run here (`gpus`: the session's, None off CUDA), the report folder,
    compile cache, timeout. ConformanceError on the first bad one."""
    from titan_conformance.compilation.cache import check_cache_path, variant_cache_path
    from titan_conformance.protocol import load_factory
    from titan_conformance.profile import check_tp

    variants = suite_variants(options)
    for variant in variants:
        profile = variant.profile
        checkpoint = options.model_path or (None if profile.model.checkpoint == "random" else profile.model.checkpoint)
        if checkpoint:
            from titan_conformance.data_files import resolve_checkpoint
            from titan_conformance.model.checkpoint import read_model_args

            where = f"--tc-model-path {checkpoint}" if options.model_path else f"profile {profile.name!r} model.checkpoint"
            check_tp(read_model_args(resolve_checkpoint(checkpoint)).to_hf_config(), profile.parallel.tp, where)
        check_factory(load_factory(variant.system), variant.system or "reference")
        if named(variant, options) and (why := variant_unavailable(variant, gpus)):
            raise ConformanceError(
                f"Cannot run what you asked for: {why.replace('this worker holds', 'this session has').rstrip('.')}. A variant "
                "you name (the suite itself, its profile's backend, --tc-system, --tc-variant) is never skipped, or "
                "the gate would pass having judged nothing: install what it needs, run where it can run, or pick "
                "other variants with --tc-variant."
            )
    writable_dir(report_dir, "The report folder")
    if options.compile_cache:
        for variant in variants:
            check_cache_path(variant_cache_path(Path(options.compile_cache), variant.name))
    if options.timeout is not None and not 0 < options.timeout <= MAX_TIMEOUT:
        raise ConformanceError(
            f"--tc-timeout {options.timeout:g}: give a number of seconds > 0 and at most {MAX_TIMEOUT:g} (a week)."
        )
    return variants
