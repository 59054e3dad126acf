"""Where the shipped profiles and fixtures are: inside the installed package, or, when running from
a source checkout without installing (PYTHONPATH), in the repository's top-level folders."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_dir(name: str) -> Path:
    """`suites` or `fixtures`."""
    try:
        return Path(str(resources.files(f"titan_conformance.{name}")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / name


def fixture_path(name: str) -> Path:
    from titan_conformance.errors import ConformanceError

    path = data_dir("fixtures") / name
    if not (path / "config.json").exists():
        raise ConformanceError(
            f"Fixture {name!r} is not installed at {path}; rebuild it with "
            "`python -m titan_conformance.fixtures.make_tiny`."
        )
    return path


def resolve_checkpoint(spec: str) -> Path:
    """`fixture:NAME` -> the shipped fixture's directory; anything else is a path."""
    return fixture_path(spec.removeprefix("fixture:")) if spec.startswith("fixture:") else Path(spec)
