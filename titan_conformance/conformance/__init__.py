"""The conformance checks, collected by `pytest --pyargs titan_conformance`."""
