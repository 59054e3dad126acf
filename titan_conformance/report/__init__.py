"""Conformance reports: what a run measured, as JSON, Markdown, HTML with plots and JUnit XML.

`session` records check results and run data during a pytest run (merged across xdist workers),
`write` turns the merged report into files atomically, and `compare` puts two reports side by side.
Only `session` is imported by the pytest plugin at start-up; plots and templates load when written.
"""

from titan_conformance.report.schema import SCHEMA_VERSION, load_report

__all__ = ["SCHEMA_VERSION", "load_report"]
