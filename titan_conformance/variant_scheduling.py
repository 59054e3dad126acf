"""xdist scheduling by variant: every test of one variant runs on one worker, so each variant's
system is built once in the session and more workers run more variants at once.

A scheduler of our own rather than `--dist loadgroup`: loadgroup renames each item's nodeid on the
worker, which pytest 9.2 no longer lets a plugin do (its nodeid derives from the item's id), so the
groups silently vanish. Imported only under xdist.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

from titan_conformance.report.merge import variant_of


class VariantScheduling(LoadScopeScheduling):
    """LoadScope with a variant as the scope; a test of no variant is a scope of its own."""

    def __init__(self, config, log, variants: list[str]) -> None:
        super().__init__(config, log)
        self.variants = set(variants)

    def _split_scope(self, nodeid: str) -> str:
        return variant_of(nodeid, self.variants) or nodeid
