"""titan_conformance: a pre-merge gate for RL post-training stacks (trainer + generator)."""

__version__ = "0.1.0"
