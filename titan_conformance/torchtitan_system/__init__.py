"""The torchtitan provider (`--tc-system torchtitan`). This module imports neither torch nor
torchtitan, so the pytest plugin can read the provider's default suite from it."""

DEFAULT_SUITE = "torchtitan-debugmodel"
"""The suite `--tc-system torchtitan` runs when no --tc-suite is given."""
