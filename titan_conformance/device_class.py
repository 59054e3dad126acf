"""Device classes: what a profile's time budgets are keyed by (`[budgets.<class>]`) and what reports
must share to be compared. `cpu`, or a GPU's model. No torch here: `compare` reads reports only."""

from __future__ import annotations

import re

DEVICE_CLASS_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
"""How a device class is spelled."""

_COMPANIES = {"nvidia", "amd", "intel"}
_BRANDS = {"tesla", "geforce", "quadro", "instinct", "radeon"}
"""Product lines, never part of a model's name."""
_SUFFIXES = {"ti", "super", "d", "ada", "blackwell"}
"""Words after the model number that make another product: RTX 3090 Ti, RTX 6000 Ada."""


def _slug(word: str) -> str:
    return re.sub(r"[^a-z0-9]", "", word)


def gpu_class(name: str) -> str:
    """A GPU's budget class: its model, lower case, as a profile's `[budgets.<class>]` names it.
    "NVIDIA H100 80GB HBM3" -> h100, "NVIDIA A100-SXM4-80GB" -> a100, "NVIDIA GeForce RTX 3090 Ti" ->
    rtx3090ti, "AMD Instinct MI300X" -> mi300x, a MIG slice "... H100 ... MIG 1g.10gb" -> h100-mig-1g10gb:
    memory sizes and form factors of one model share a class, other products do not."""
    words = [w for w in re.split(r"[\s_/]+", name.lower()) if w and w not in _COMPANIES]
    for i, word in enumerate(words):
        model = _slug(word.split("-")[0])
        if not any(c.isdigit() for c in model):
            continue
        first = i
        while word.isdigit() and first and words[first - 1].isalpha() and words[first - 1] not in _BRANDS:
            first -= 1  # a bare number takes the words before it: "rtx 4090", "rtx pro 6000"
            model = words[first] + model
        for word_after in words[i + 1 :]:
            if word_after not in _SUFFIXES:
                break
            model += word_after
        if "mig" in words[i + 1 :]:
            rest = words[words.index("mig", i + 1) + 1 :]
            model += "-mig" + (f"-{_slug(rest[0])}" if rest else "")
        return model
    return "-".join(filter(None, map(_slug, words))) or "gpu"


def recorded_class(stored: str | None, gpu: str | None) -> str | None:
    """A report's device class as this version names it: reports written before classes were GPU
    models stored the whole lower-cased name for a GPU other than an H100 or H200."""
    if stored and gpu and not DEVICE_CLASS_NAME.fullmatch(stored):
        return gpu_class(gpu)
    return stored
